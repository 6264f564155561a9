//! The lab's cluster in an API server for the run (`flowpol lab --kube`): its namespaces,
//! node, pods with their status and policies published as a cluster holds them, so what
//! reads a cluster (the agent, an enforcer) sees the lab as one; removed afterwards.
use std::{path::Path, time::Duration};

use flowpol_kube::{
    publish::{self, PublishError},
    watch::{self, ConnectError},
};
use kube::{Client, Config};
use serde_json::Value;

use crate::{objects, scenario::Resolved};

/// How long publishing waits for the endpointslice controller to make the lab's slices.
const ENDPOINTS_WITHIN: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum InClusterError {
    #[error("connecting to the Kubernetes API server")]
    Connect(#[source] ConnectError),
    #[error("publishing the lab's cluster")]
    Publish(#[source] PublishError),
    #[error("removing the lab's cluster from the API server")]
    Remove(#[source] PublishError),
}

/// A connection to the API server the lab publishes into.
#[derive(Clone)]
pub struct ApiServer {
    pub client: Client,
    pub config: Config,
}

impl ApiServer {
    /// Through the kubeconfig (and context) given, or kubectl's defaults.
    pub async fn connect(
        kubeconfig: Option<&Path>,
        context: Option<&str>,
    ) -> Result<Self, InClusterError> {
        let connection = watch::connect(kubeconfig, context)
            .await
            .map_err(InClusterError::Connect)?;
        Ok(Self {
            client: connection.client,
            config: connection.config,
        })
    }

    /// Creates `items` (and waits for their Services' endpoints).
    pub async fn publish(&self, items: &[Value]) -> Result<Published, InClusterError> {
        let published = publish::publish(&self.client, items, ENDPOINTS_WITHIN)
            .await
            .map_err(InClusterError::Publish)?;
        Ok(Published {
            client: self.client.clone(),
            published: vec![published],
        })
    }
}

/// What was published, and how to take it back.
pub struct Published {
    client: Client,
    /// In the order published; removed in reverse.
    published: Vec<publish::Published>,
}

impl Published {
    /// Publishes `resolved`'s cluster through the kubeconfig (and context) given, or
    /// kubectl's defaults.
    pub async fn new(
        kubeconfig: Option<&Path>,
        context: Option<&str>,
        resolved: &Resolved,
    ) -> Result<Self, InClusterError> {
        ApiServer::connect(kubeconfig, context)
            .await?
            .publish(&objects::snapshot_items(resolved))
            .await
    }

    /// Adds what a later publish created, to be removed first.
    pub fn absorb(&mut self, later: Published) {
        self.published.extend(later.published);
    }

    /// Objects created.
    pub fn created(&self) -> usize {
        self.published.iter().map(publish::Published::created).sum()
    }

    /// What the cluster already held and was kept (its own `default` namespace, ...).
    pub fn kept(&self) -> Vec<String> {
        self.published
            .iter()
            .flat_map(|p| p.kept.iter().cloned())
            .collect()
    }

    pub async fn remove(self) -> Result<(), InClusterError> {
        for p in self.published.iter().rev() {
            p.remove(&self.client)
                .await
                .map_err(InClusterError::Remove)?;
        }
        Ok(())
    }
}

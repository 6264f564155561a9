//! The lab's cluster in an API server for the run (`flowpol lab --kube`): its namespaces,
//! node, pods with their status and policies published as a cluster holds them, so what
//! reads a cluster (the agent, an enforcer) sees the lab as one; removed afterwards.
use std::{path::Path, time::Duration};

use flowpol_kube::{
    publish::{self, PublishError},
    watch::{self, ConnectError},
};
use kube::Client;

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

/// What was published, and how to take it back.
pub struct Published {
    client: Client,
    published: publish::Published,
}

impl Published {
    /// Publishes `resolved`'s cluster through the kubeconfig (and context) given, or
    /// kubectl's defaults.
    pub async fn new(
        kubeconfig: Option<&Path>,
        context: Option<&str>,
        resolved: &Resolved,
    ) -> Result<Self, InClusterError> {
        let connection = watch::connect(kubeconfig, context)
            .await
            .map_err(InClusterError::Connect)?;
        let published = publish::publish(
            &connection.client,
            &objects::snapshot_items(resolved),
            ENDPOINTS_WITHIN,
        )
        .await
        .map_err(InClusterError::Publish)?;
        Ok(Self {
            client: connection.client,
            published,
        })
    }

    /// Objects created.
    pub fn created(&self) -> usize {
        self.published.created()
    }

    /// What the cluster already held and was kept (its own `default` namespace, ...).
    pub fn kept(&self) -> &[String] {
        &self.published.kept
    }

    pub async fn remove(self) -> Result<(), InClusterError> {
        self.published
            .remove(&self.client)
            .await
            .map_err(InClusterError::Remove)
    }
}

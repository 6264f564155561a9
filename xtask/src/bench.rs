pub fn run(_: What) -> anyhow::Result<()> {
    Ok(())
}
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum What {
    Capture,
}

//! Command-line operations that print progress bars.

use indicatif::{ProgressBar, ProgressStyle};
use tenantry_control_plane::ControlPlane;
use tenantry_control_plane::fleet::Outcome;

use crate::Settings;

fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} ({elapsed})")
            .expect("constant template is valid")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// `tenantry migrate`: registry first (on start), then the fleet.
pub async fn migrate(settings: &Settings, concurrency: usize) -> anyhow::Result<()> {
    let cp = ControlPlane::start(settings.control_plane.clone()).await?;
    let total = cp.migration_status().await?.len() as u64;
    let progress = bar(total, "backends");
    let runs = cp
        .migrate_fleet("cli", concurrency, |done, total| {
            progress.set_length(total as u64);
            progress.set_position(done as u64);
        })
        .await?;
    progress.finish();
    let mut failed = 0;
    for run in &runs {
        match &run.outcome {
            Outcome::Applied { from, to } => println!("  {:<44} {from} -> {to} ({} ms)", run.name, run.duration_ms),
            Outcome::UpToDate { version } => println!("  {:<44} up to date at {version}", run.name),
            Outcome::Failed { error } => {
                failed += 1;
                println!("  {:<44} FAILED: {error}", run.name);
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} backends failed to migrate; fix them and run again", runs.len());
    }
    println!("{} backends at the latest tenant schema", runs.len());
    Ok(())
}

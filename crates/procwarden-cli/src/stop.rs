//! `procwarden stop`: stop one shared service now.

use procwarden::shared::{StateDir, stop_now};

use crate::Failure;

/// Stops the service `name`, whoever holds it.
pub async fn run(dir: &StateDir, name: &str) -> Result<(), Failure> {
    if stop_now(dir, name).await.map_err(Failure::runtime)? {
        println!("stopped {name}");
    } else {
        println!("{name} was not running");
    }
    Ok(())
}

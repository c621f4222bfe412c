//! `cargo xtask images`: builds the container images from `deploy/images/`
//! (multi-stage Dockerfiles, the workspace as build context).

use std::process::{Command, ExitCode};

/// Images and their Dockerfiles, as the manifests name them.
pub const IMAGES: [&str; 4] = ["agent", "cni", "waypoint", "ca"];

pub fn images(registry: &str, tag: &str) -> ExitCode {
    let docker_ok = Command::new("docker").arg("info").output().is_ok_and(|o| o.status.success());
    if !docker_ok {
        eprintln!(
            "images: skipped: the Docker daemon is not running (or this user may not use it); images need Docker with BuildKit"
        );
        return ExitCode::from(3);
    }
    for name in IMAGES {
        let image = format!("{registry}/pillion-{name}:{tag}");
        println!("[images] building {image}");
        let status = Command::new("docker")
            .current_dir(crate::workspace())
            .env("DOCKER_BUILDKIT", "1")
            .args(["build", "-f", &format!("deploy/images/{name}.Dockerfile"), "-t", &image, "."])
            .status();
        if !status.is_ok_and(|s| s.success()) {
            eprintln!("images: building {image} failed");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

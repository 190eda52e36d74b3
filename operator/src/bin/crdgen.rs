//! Prints one CustomResourceDefinition as YAML, `grapecluster` (the default), `grapebackup` or
//! `grapescheduledbackup`: `cargo run -p grape-operator --bin crdgen -- grapebackup >
//! crds/grapebackup.yaml`. `--write` writes every copy the repository keeps (`crds/`, the
//! chart's `crds/`, `manifests/crd*.yaml`).

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    let all = grape_operator::crd::crd_yamls();
    let wanted = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "grapecluster".into());
    if wanted == "--write" {
        for (stem, yaml) in &all {
            for path in grape_operator::crd::crd_copies(stem) {
                if let Err(e) = std::fs::write(&path, yaml) {
                    eprintln!("{path}: {e}");
                    return std::process::ExitCode::FAILURE;
                }
                println!("wrote {path}");
            }
        }
        return std::process::ExitCode::SUCCESS;
    }
    match all.iter().find(|(stem, _)| *stem == wanted) {
        Some((_, yaml)) => {
            print!("{yaml}");
            std::process::ExitCode::SUCCESS
        }
        None => {
            eprintln!(
                "no CRD {wanted:?}: grapecluster, grapebackup, grapescheduledbackup or --write"
            );
            std::process::ExitCode::FAILURE
        }
    }
}

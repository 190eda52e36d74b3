//! Prints the GrapeCluster CustomResourceDefinition as YAML:
//! `cargo run -p grape-operator --bin crdgen > crds/grapecluster.yaml`.

#![forbid(unsafe_code)]

fn main() {
    print!("{}", grape_operator::crd::crd_yaml());
}

//! Placeholder binary: the chained CNI plugin and node agent arrive with the CNI issue.
//! It exits non-zero so nothing can mistake it for a working plugin.

fn main() {
    eprintln!("nodetunnel-cni: not implemented yet (see the CNI issue)");
    std::process::exit(1);
}

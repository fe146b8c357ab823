//! The chained CNI plugin (see `nodetunnel_cni::plugin`).

fn main() {
    std::process::exit(nodetunnel_cni::plugin::main());
}

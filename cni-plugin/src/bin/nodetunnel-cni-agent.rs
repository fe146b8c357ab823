//! The CNI node agent (see `nodetunnel_cni::agent`).

fn main() {
    std::process::exit(nodetunnel_cni::agent::main());
}

//! SKELETON (helper-control): `nodetunnel-control`.
fn main() {}

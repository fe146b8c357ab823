//! SKELETON (helper-control): watching the mesh file.

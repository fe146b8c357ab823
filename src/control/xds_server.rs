//! SKELETON (helper-control): the delta ADS server.

//! SKELETON (helper-xds): the ADS stream loop.

//! SKELETON (helper-ca): the control plane's `IstioCertificateService`.

//! In-process integration tests on loopback: HBONE, mutual TLS, certificates, the CA API.
//! One test binary so the crate links once.
#![forbid(unsafe_code)]

mod ca_grpc;
mod limits;
mod malformed;
mod peer_certs;
mod pool;
mod rotation;
mod support;
mod tunnel;

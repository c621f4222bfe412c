//! Parsers for untrusted input from the wire: CONNECT authorities, SPIFFE IDs, `Forwarded`
//! and `traceparent`.
//!
//! Each file here depends only on `std` and `thiserror` and never on `crate::`/`super::`
//! items, so `mesh/fuzz` compiles the very same files without the TLS stack.

pub mod authority;
pub mod forwarded;
pub mod spiffe_id;
pub mod traceparent;

pub use authority::{Authority, AuthorityError, Host};
pub use forwarded::{ForwardedElement, ForwardedError, Node, parse_forwarded};
pub use spiffe_id::{Identity, SpiffeId, SpiffeIdError};
pub use traceparent::{Traceparent, TraceparentError};

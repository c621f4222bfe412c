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

/// The value of one hex digit (either case), for percent-decoding.
pub fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

//! The fuzz targets: each takes arbitrary bytes, runs one parser from `mesh/src/parse/` and
//! checks its invariants. The parser files are compiled here directly (not through the
//! `mesh` crate), so fuzzing needs none of the TLS, HTTP/2 or gRPC stack.
#![forbid(unsafe_code)]

#[path = "../../src/parse/authority.rs"]
pub mod authority;
#[path = "../../src/parse/forwarded.rs"]
pub mod forwarded;
#[path = "../../src/parse/spiffe_id.rs"]
pub mod spiffe_id;
#[path = "../../src/parse/traceparent.rs"]
pub mod traceparent;

/// A fuzz target and the seed inputs the stable runner mutates.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
    pub seeds: &'static [&'static str],
}

pub const TARGETS: &[Target] = &[
    Target {
        name: "authority",
        run: fuzz_authority,
        seeds: &["10.0.2.5:80", "[fd00::5]:15008", "reviews.default.svc.cluster.local:9080", "a:1"],
    },
    Target {
        name: "spiffe_id",
        run: fuzz_spiffe_id,
        seeds: &["spiffe://cluster.local/ns/default/sa/bookinfo", "spiffe://td/agent/x", "spiffe://a.b-c_d"],
    },
    Target {
        name: "forwarded",
        run: fuzz_forwarded,
        seeds: &[
            "for=192.0.2.60;proto=http;by=203.0.113.43",
            r#"for="[2001:db8:cafe::17]:4711", for=unknown;host="a\"b""#,
            "for=_hidden:_port",
        ],
    },
    Target {
        name: "traceparent",
        run: fuzz_traceparent,
        seeds: &[
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-ext",
        ],
    },
];

pub fn fuzz_authority(data: &[u8]) {
    let input = String::from_utf8_lossy(data);
    if let Ok(a) = authority::Authority::parse(&input) {
        // The wire form must parse back to the same value.
        let again = authority::Authority::parse(&a.to_string()).expect("display output must parse");
        assert_eq!(a, again);
        assert_ne!(a.port, 0);
    }
}

pub fn fuzz_spiffe_id(data: &[u8]) {
    let input = String::from_utf8_lossy(data);
    if let Ok(id) = spiffe_id::SpiffeId::parse(&input) {
        assert_eq!(id.as_str(), input);
        assert!(input.len() <= spiffe_id::MAX_SPIFFE_ID_LEN);
        let rebuilt = format!("spiffe://{}{}", id.trust_domain(), id.path());
        assert_eq!(rebuilt, input);
    }
    if let Ok(id) = spiffe_id::Identity::parse(&input) {
        let rebuilt = spiffe_id::Identity::new(id.trust_domain(), id.namespace(), id.service_account())
            .expect("parts of a valid identity must rebuild it");
        assert_eq!(rebuilt, id);
    }
}

pub fn fuzz_forwarded(data: &[u8]) {
    let input = String::from_utf8_lossy(data);
    if let Ok(elements) = forwarded::parse_forwarded(&input) {
        assert!(elements.len() <= forwarded::MAX_FORWARDED_ELEMENTS);
        for e in &elements {
            let _ = e.for_node();
            if let Some(by) = e.get("by") {
                let _ = forwarded::Node::parse(by);
            }
        }
    }
}

pub fn fuzz_traceparent(data: &[u8]) {
    let input = String::from_utf8_lossy(data);
    if let Ok(t) = traceparent::Traceparent::parse(&input) {
        assert_ne!(t.trace_id, 0);
        assert_ne!(t.parent_id, 0);
        assert_ne!(t.version, 0xff);
        if t.version == 0 {
            let rebuilt = format!("00-{:032x}-{:016x}-{:02x}", t.trace_id, t.parent_id, t.flags);
            assert_eq!(rebuilt, input);
        }
    }
}

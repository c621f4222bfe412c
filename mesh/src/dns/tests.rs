use super::*;
use hickory_proto::op::Query;

const MODEL: &str = "\
apiVersion: pillion.dev/v1alpha1
kind: Service
metadata: {name: cart, namespace: shop}
spec:
  clusterIPs: [10.96.0.10, fd00::10]
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: grpc, port: 9090}
---
apiVersion: pillion.dev/v1alpha1
kind: Service
metadata: {name: headless, namespace: shop}
spec:
  ports: [{name: http, port: 80}]
";

fn model() -> Model {
    crate::config::parse(MODEL, "test.yaml", 1).expect("model")
}

fn ask(name: &str, qtype: RecordType, namespace: Option<&str>) -> Answer {
    let mut q = Message::query();
    q.metadata.id = 4242;
    q.metadata.recursion_desired = true;
    q.queries.push(Query::query(Name::from_ascii(name).unwrap(), qtype));
    answer(&model(), "cluster.local", namespace, &q)
}

fn local(a: Answer) -> Message {
    match a {
        Answer::Local(m) => *m,
        Answer::Forward => panic!("expected a local answer"),
    }
}

fn data(m: &Message) -> Vec<String> {
    m.answers.iter().map(|r| r.data.to_string()).collect()
}

#[test]
fn a_service_name_gets_its_vips_by_family_with_the_query_id_and_question() {
    let m = local(ask("cart.shop.svc.cluster.local.", RecordType::A, None));
    assert_eq!(m.metadata.id, 4242);
    assert_eq!(m.metadata.message_type, MessageType::Response);
    assert!(m.metadata.authoritative && m.metadata.recursion_desired);
    assert_eq!(m.queries.len(), 1);
    assert_eq!(data(&m), ["10.96.0.10"]);
    assert_eq!(m.answers[0].ttl, TTL);
    assert_eq!(m.answers[0].name.to_ascii(), "cart.shop.svc.cluster.local.");
    let m = local(ask("cart.shop.svc.cluster.local.", RecordType::AAAA, None));
    assert_eq!(data(&m), ["fd00::10"]);
    // Case does not matter; the reply keeps the asker's spelling.
    let m = local(ask("Cart.SHOP.svc.Cluster.Local.", RecordType::A, None));
    assert_eq!(data(&m), ["10.96.0.10"]);
    assert_eq!(m.answers[0].name.to_ascii(), "Cart.SHOP.svc.Cluster.Local.");
}

#[test]
fn relative_names_are_tried_against_the_askers_search_list_only() {
    let m = local(ask("cart.", RecordType::A, Some("shop")));
    assert_eq!(data(&m), ["10.96.0.10"]);
    let m = local(ask("cart.shop.", RecordType::A, Some("web")));
    assert_eq!(data(&m), ["10.96.0.10"]);
    // From another namespace a bare name is not this Service.
    assert_eq!(ask("cart.", RecordType::A, Some("web")), Answer::Forward);
    assert_eq!(ask("cart.", RecordType::A, None), Answer::Forward);
}

#[test]
fn other_names_headless_services_and_other_domains_are_forwarded() {
    for name in [
        "example.com.",
        "nope.shop.svc.cluster.local.",
        "headless.shop.svc.cluster.local.",
        "cart.shop.svc.other.domain.",
        "shop.svc.cluster.local.",
        "x.cart.shop.svc.cluster.local.",
    ] {
        assert_eq!(ask(name, RecordType::A, Some("shop")), Answer::Forward, "{name}");
    }
}

#[test]
fn a_known_name_without_that_type_is_nodata_not_nxdomain() {
    let m = local(ask("cart.shop.svc.cluster.local.", RecordType::MX, None));
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
}

#[test]
fn srv_names_a_port_by_name_and_protocol() {
    let m = local(ask("_grpc._tcp.cart.shop.svc.cluster.local.", RecordType::SRV, None));
    assert_eq!(data(&m), ["0 100 9090 cart.shop.svc.cluster.local."]);
    let m = local(ask("_grpc._udp.cart.shop.svc.cluster.local.", RecordType::SRV, None));
    assert!(m.answers.is_empty());
    assert_eq!(ask("_grpc._quic.cart.shop.svc.cluster.local.", RecordType::SRV, None), Answer::Forward);
}

#[test]
fn reverse_lookups_of_vips_name_the_service_and_others_are_forwarded() {
    let m = local(ask("10.0.96.10.in-addr.arpa.", RecordType::PTR, None));
    assert_eq!(data(&m), ["cart.shop.svc.cluster.local."]);
    let v6 = "0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.";
    let m = local(ask(v6, RecordType::PTR, None));
    assert_eq!(data(&m), ["cart.shop.svc.cluster.local."]);
    for name in ["11.0.96.10.in-addr.arpa.", "0.96.10.in-addr.arpa.", "300.0.96.10.in-addr.arpa."] {
        assert_eq!(ask(name, RecordType::PTR, None), Answer::Forward, "{name}");
    }
}

#[test]
fn responses_updates_and_multi_question_messages_are_not_answered() {
    let mut q = Message::query();
    q.queries.push(Query::query(Name::from_ascii("cart.shop.svc.cluster.local.").unwrap(), RecordType::A));
    let mut response = q.clone();
    response.metadata.message_type = MessageType::Response;
    assert_eq!(answer(&model(), "cluster.local", None, &response), Answer::Forward);
    let mut two = q.clone();
    two.queries.push(two.queries[0].clone());
    assert_eq!(answer(&model(), "cluster.local", None, &two), Answer::Forward);
    let mut update = q.clone();
    update.metadata.op_code = OpCode::Update;
    assert_eq!(answer(&model(), "cluster.local", None, &update), Answer::Forward);
}

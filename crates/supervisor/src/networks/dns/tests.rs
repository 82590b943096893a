use super::*;

/// A query as a resolver sends it: id, RD, one question.
fn query(name: &str, qtype: u16) -> Vec<u8> {
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(u8::try_from(label.len()).unwrap());
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&CLASS_IN.to_be_bytes());
    q
}

#[test]
fn a_question_is_read_and_answered_with_a_records_ttl_0() {
    let msg = query("Web.2", TYPE_A);
    let q = parse_query(&msg).unwrap();
    assert_eq!((q.id, q.name.as_str(), q.qtype), (0x1234, "web.2", TYPE_A));
    let addrs = [
        IpAddr::V4(Ipv4Addr::new(10, 89, 1, 2)),
        IpAddr::V6("fd89::a59:102".parse().unwrap()),
        IpAddr::V4(Ipv4Addr::new(10, 89, 1, 3)),
    ];
    let r = answer(&msg, &q, &addrs, 0, UDP_MAX);
    assert_eq!(
        &r[..4],
        &[0x12, 0x34, 0x85, 0x80],
        "id, QR AA RD, RA NOERROR"
    );
    assert_eq!(
        &r[4..12],
        &[0, 1, 0, 2, 0, 0, 0, 0],
        "1 question, 2 answers"
    );
    assert_eq!(&r[12..msg.len()], &msg[12..], "the question, as asked");
    let first = &r[msg.len()..msg.len() + 16];
    assert_eq!(
        first,
        &[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4, 10, 89, 1, 2]
    );
}

#[test]
fn aaaa_of_a_known_name_is_nodata_and_an_unknown_one_nxdomain() {
    let msg = query("db", TYPE_AAAA);
    let q = parse_query(&msg).unwrap();
    let r = answer(
        &msg,
        &q,
        &[IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2))],
        0,
        UDP_MAX,
    );
    assert_eq!(&r[2..8], &[0x85, 0x80, 0, 1, 0, 0], "NOERROR, no answer");
    // On an IPv6 network: its AAAA record, and no A one.
    let v6: std::net::Ipv6Addr = "fd89:1:2:5907::a59:702".parse().unwrap();
    let both = [IpAddr::V4(Ipv4Addr::new(10, 89, 7, 2)), IpAddr::V6(v6)];
    let r = answer(&msg, &q, &both, 0, UDP_MAX);
    assert_eq!(&r[6..8], &[0, 1], "one answer");
    let rec = &r[msg.len()..];
    assert_eq!(&rec[2..4], &TYPE_AAAA.to_be_bytes());
    assert_eq!(&rec[10..12], &16u16.to_be_bytes());
    assert_eq!(&rec[12..28], &v6.octets());
    let r = answer(&msg, &q, &[], RCODE_NXDOMAIN, UDP_MAX);
    assert_eq!(r[3] & 0x0f, RCODE_NXDOMAIN);
}

#[test]
fn what_is_not_a_plain_query_is_ignored() {
    let mut resp = query("db", TYPE_A);
    resp[2] |= 0x80;
    assert_eq!(parse_query(&resp), None, "a response");
    let mut two = query("db", TYPE_A);
    two[5] = 2;
    assert_eq!(parse_query(&two), None, "two questions");
    let q = query("db", TYPE_A);
    assert_eq!(parse_query(&q[..q.len() - 1]), None, "cut short");
    let mut chaos = query("db", TYPE_A);
    let n = chaos.len();
    chaos[n - 1] = 3;
    assert_eq!(parse_query(&chaos), None, "class CH");
}

#[test]
fn an_answer_too_long_for_udp_is_cut_for_tcp() {
    let msg = query("web", TYPE_A);
    let q = parse_query(&msg).unwrap();
    let many: Vec<IpAddr> = (0..40)
        .map(|k| IpAddr::V4(Ipv4Addr::new(10, 89, 1, k)))
        .collect();
    let r = answer(&msg, &q, &many, 0, UDP_MAX);
    assert_eq!(r[2] & 0x02, 0x02, "TC");
    assert_eq!(&r[6..8], &[0, 0], "no records");
    let r = answer(&msg, &q, &many, 0, usize::from(u16::MAX));
    assert_eq!(r[2] & 0x02, 0);
    assert_eq!(&r[6..8], &[0, 40]);
}

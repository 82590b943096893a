use super::*;
use serde_json::json;

#[test]
fn subnets() {
    let s = Subnet::parse("10.89.7.0/24").unwrap();
    assert_eq!(s.gateway(), Ipv4Addr::new(10, 89, 7, 1));
    assert_eq!(s.host(0), Some(Ipv4Addr::new(10, 89, 7, 2)));
    assert_eq!(s.host(252), Some(Ipv4Addr::new(10, 89, 7, 254)));
    assert_eq!(s.host(253), None, "the broadcast address");
    assert_eq!(s.index_of(Ipv4Addr::new(10, 89, 7, 9)), Some(7));
    assert_eq!(s.index_of(Ipv4Addr::new(10, 89, 7, 1)), None);
    assert_eq!(s.index_of(Ipv4Addr::new(10, 89, 8, 9)), None);
    assert!(s.overlaps(Subnet::parse("10.89.0.0/16").unwrap()));
    assert!(!s.overlaps(Subnet::parse("10.89.8.0/24").unwrap()));
    for bad in [
        "10.89.7.1/24",
        "10.89.7.0",
        "10.89.7.0/31",
        "10.0.0.0/7",
        "x/24",
    ] {
        assert_eq!(Subnet::parse(bad), None, "{bad}");
    }
}

fn err(v: Value) -> String {
    parse_stack(&v, std::path::Path::new("/"))
        .unwrap_err()
        .to_string()
}

#[test]
fn bad_networks_are_named() {
    assert_eq!(
        err(json!({"a": {"subnet": "10.1.0.1/24"}})),
        "networks.a.subnet: `10.1.0.1/24`: want an IPv4 network like 10.89.7.0/24 (prefix 8 to 29, host bits zero)"
    );
    assert_eq!(
        err(json!({"a": {"subnet": "10.1.0.0/16"}, "b": {"subnet": "10.1.2.0/24"}})),
        "networks.b.subnet: 10.1.2.0/24: overlaps 10.1.0.0/16 of network a"
    );
    assert_eq!(
        err(json!({"a": {"ipv6": 1}})),
        "networks.a.ipv6: 1: wrong type"
    );
    assert_eq!(
        err(json!({"a": {"mtu": 100}})),
        "networks.a.mtu: 100: must be 576 to 65535"
    );
    assert_eq!(
        err(json!({"a": {"gateway": "x"}})),
        "networks.a.gateway: unknown field (subnet, internal, ipv6, mtu, driver, cni)"
    );
    assert!(err(json!({"a b": {}})).starts_with("networks.a b: `a b`: not a name DNS can carry"));
}

fn member<'a>(name: &'a str, a: &'a [Attachment], own: bool) -> Member<'a> {
    Member {
        name,
        group: None,
        attachments: a,
        own_netns: own,
        user_ns: false,
    }
}

#[test]
fn members_are_checked_together() {
    let nets = parse_stack(
        &json!({"back": {"subnet": "10.9.0.0/24"}, "front": {}}),
        std::path::Path::new("/"),
    )
    .unwrap();
    let att = |v: Value| parse_service(&v, "services.x.networks").unwrap();
    let web = att(json!(["front", {"name": "back", "aliases": ["api"]}]));
    let db = att(json!([{"name": "back", "ipv4": "10.9.0.5"}]));
    assert!(check_members(&nets, &[member("web", &web, true), member("db", &db, true)]).is_ok());
    let cases: Vec<(Vec<Member<'_>>, &str)> = vec![
        (
            vec![member("web", &web, false)],
            "services.web.networks: needs its own network namespace",
        ),
        (
            vec![member("db", &att(json!(["nowhere"])).leak()[..], true)],
            "services.db.networks[0]: nowhere: no such network",
        ),
        (
            vec![member("web", &web, true), member("api", &db, true)],
            "services.api.networks[0]: api: already a name of web on network back",
        ),
        (
            vec![
                member("db", &db, true),
                member(
                    "db2",
                    &att(json!([{"name": "back", "ipv4": "10.9.0.5"}])).leak()[..],
                    true,
                ),
            ],
            "services.db2.networks[0].ipv4: 10.9.0.5: taken by db",
        ),
        (
            vec![member(
                "x",
                &att(json!([{"name": "back", "ipv4": "10.9.1.5"}])).leak()[..],
                true,
            )],
            "services.x.networks[0].ipv4: 10.9.1.5: not a service address of 10.9.0.0/24",
        ),
        (
            vec![member(
                "x",
                &att(json!([{"name": "front", "ipv4": "10.9.1.5"}])).leak()[..],
                true,
            )],
            "services.x.networks[0].ipv4: 10.9.1.5: give network front a subnet",
        ),
    ];
    for (ms, want) in cases {
        let e = check_members(&nets, &ms).unwrap_err().to_string();
        assert!(e.starts_with(want), "got {e}\nwant {want}");
    }
    assert_eq!(
        parse_service(&json!(["a", "a"]), "n")
            .unwrap_err()
            .to_string(),
        "n[1]: a: listed twice"
    );
    assert!(
        parse_service(&json!([{"name": "a", "aliases": ["b c"]}]), "n")
            .unwrap_err()
            .to_string()
            .starts_with("n[0].aliases[0]: `b c`: not a name DNS can carry")
    );
}

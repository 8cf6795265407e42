//! Properties over generated configuration files, and the parts of a
//! server's options that xypriss reads or names as ignored.

use super::*;

/// JSON values shaped like configs: the real keys (and a few others) at
/// every level, any kind of value.
fn config_like() -> impl Strategy<Value = Json> {
    let mut keys: Vec<&'static str> = sections()
        .iter()
        .flat_map(|section| section.keys.iter().copied())
        .collect();
    keys.extend([
        "cluster",
        "config",
        "memoryManagement",
        "memoryWarningTreshold",
        "junk",
    ]);
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        (0u64..200).prop_map(Json::from),
        any::<i64>().prop_map(Json::from),
        any::<u64>().prop_map(Json::from),
        (-200.0f64..200.0).prop_map(Json::from),
        prop::sample::select(vec![
            "auto", "512MB", "1.5GB", "-1MB", "80%", "", "1e400 TB"
        ])
        .prop_map(Json::from),
        ".{0,6}".prop_map(Json::String),
    ];
    leaf.prop_recursive(5, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Json::Array),
            prop::collection::vec((prop::sample::select(keys.clone()), inner), 0..5).prop_map(
                |entries| Json::Object(
                    entries
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect()
                )
            ),
        ]
    })
}

/// Either a config whose checked invariants hold, or an error that names
/// the file and, when it has one, the path.
fn assert_sound(result: Result<Options, ConfigError>) {
    match result {
        Ok(o) => {
            let m = &o.memory.memory_management;
            assert!(m.memory_warning_threshold > 0.0 && m.memory_critical_threshold <= 100.0);
            assert!(m.memory_warning_threshold < m.memory_critical_threshold);
            assert!(!m.memory_check_interval.is_zero());
            assert!((1..=o.max_workers).contains(&o.min_workers));
            assert!(o.max_workers <= MAX_WORKERS);
        }
        Err(e) => {
            let message = e.to_string();
            assert!(message.contains(FILE), "{message}");
            if let Some(path) = e.path() {
                assert!(message.contains(path), "{message}");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        assert_sound(merge::resolve(Some((Path::new(FILE), &bytes)), &[]).map(|r| r.options));
    }

    #[test]
    fn damaged_examples_never_panic(cut in 0..ADVANCED_CONFIG.len(), at in 0..ADVANCED_CONFIG.len(), byte in any::<u8>()) {
        let mut bytes = ADVANCED_CONFIG.as_bytes()[..cut].to_vec();
        if let Some(b) = bytes.get_mut(at) {
            *b = byte;
        }
        assert_sound(merge::resolve(Some((Path::new(FILE), &bytes)), &[]).map(|r| r.options));
    }

    #[test]
    fn arbitrary_json_never_panics(value in config_like(), wrap in any::<bool>()) {
        let json = if wrap { outer(&value.to_string()) } else { value.to_string() };
        assert_sound(load(&json));
    }
}

#[test]
fn a_fraction_for_a_percentage_is_refused_with_what_it_may_mean() {
    let e = error(&memory_management(r#""memoryWarningThreshold": 0.8"#));
    assert!(
        e.starts_with("app.json:1:66: resources.memoryManagement.memoryWarningThreshold: ")
            && e.contains("write 80 for 80%")
            && e.contains(r#""0.8%""#),
        "{e}"
    );
    let options = load(&memory_management(r#""memoryWarningThreshold": "0.8%""#)).unwrap();
    assert_eq!(
        options.memory.memory_management.memory_warning_threshold,
        0.8
    );
    let options = load(&memory_management(r#""swapUsageLimit": "5%""#)).unwrap();
    assert_eq!(options.memory.memory_management.swap_usage_limit, 5.0);
    // 1 and over are percentages as they are.
    assert_eq!(
        load(&memory_management(r#""swapUsageLimit": 1"#))
            .unwrap()
            .memory
            .memory_management
            .swap_usage_limit,
        1.0
    );
    let e = flags(&["--memory-warning-threshold", "0.8"])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--memory-warning-threshold") && e.contains("write 80 for 80%"),
        "{e}"
    );
    assert_eq!(
        flags(&["--scale-down-cpu-threshold", "0.5%"])
            .unwrap()
            .get(&defs::DOWN_CPU),
        Some(Value::Percent(0.5))
    );
}

/// A real XyPriss server's options: `cluster` beside XyPriss's own sections.
const SERVER: &str = r#"{
    "env": "production",
    "server": { "port": 3000, "host": "0.0.0.0", "autoPortSwitch": { "enabled": true } },
    "security": { "enabled": true, "cors": true },
    "cache": { "strategy": "memory", "maxSize": 104857600 },
    "logging": { "level": "info" },
    "cluster": {
        "enabled": true,
        "config": { "workers": 2, "resources": { "maxMemoryPerWorker": "256MB" } }
    }
}"#;

#[test]
fn the_other_sections_of_a_server_config_are_ignored_and_named() {
    let resolved = merge::resolve(Some((Path::new(FILE), SERVER.as_bytes())), &[]).unwrap();
    assert_eq!(
        resolved.ignored,
        ["env", "server", "security", "cache", "logging"]
    );
    assert_eq!(resolved.options.workers, WorkerCount::Fixed(2));
    assert_eq!(resolved.options.memory.max_memory_per_worker, 256 << 20);
    // Inside `cluster`, an unknown key is still refused.
    assert_eq!(
        error(r#"{"server": {}, "cluster": {"enabled": true, "strategy": "round-robin"}}"#),
        "app.json:1:54: cluster.strategy: unknown key; the keys here are `enabled`, `config`"
    );
    // So is a misspelt section.
    assert!(
        error(r#"{"servr": {"port": 3000}}"#)
            .ends_with("servr: unknown key; did you mean `server`?")
    );
}

//! Every refusal of a configuration: what it says and where it points.

use super::*;

#[test]
fn sizes_take_every_documented_form() {
    for (written, bytes) in [
        (r#""512MB""#, 512u64 << 20),
        (r#""1.5GB""#, 3 << 29),
        (r#""512 MB""#, 512 << 20),
        (r#""256MiB""#, 256 << 20),
        (r#""2TB""#, 2 << 40),
        (r#""4096kb""#, 4 << 20),
        ("1048576", 1 << 20),
        ("2097152.0", 2 << 20),
    ] {
        let config = load(&memory_management(&format!(
            r#""memoryReservation": {written}"#
        )))
        .unwrap_or_else(|e| panic!("{written}: {e}"));
        assert_eq!(
            config.memory.memory_management.memory_reservation, bytes,
            "{written}"
        );
    }
}

#[test]
fn bad_sizes_say_why_at_their_path() {
    let at = |value: &str| error(&memory_management(&format!(r#""maxTotalMemory": {value}"#)));
    assert_eq!(
        at(r#""-1MB""#),
        "app.json:1:61: resources.memoryManagement.maxTotalMemory: `-1MB` is negative: a size must be 0 or more"
    );
    assert!(at(r#""12 parsecs""#).ends_with(
        "resources.memoryManagement.maxTotalMemory: `parsecs` is not a size unit: use B, KB, MB, GB, TB (×1024) or KiB, MiB, GiB, TiB"
    ));
    assert!(at("-5").ends_with("-5 is negative: a size must be 0 or more"));
    assert!(at("1.5").ends_with(
        "1.5 is not a whole number of bytes; write a fraction with a unit, as in \"1.5GB\""
    ));
    assert!(at("true").ends_with(
        "resources.memoryManagement.maxTotalMemory: expected a size, as in \"512MB\" or a number of bytes, found `true`"
    ));
    assert!(at("1e400").contains("number out of range"));
}

#[test]
fn a_typo_gets_did_you_mean_with_its_path() {
    let json = outer(&memory_management(r#""memoryWarningTreshold": 70"#));
    let e = load(&json).unwrap_err();
    assert_eq!(
        e.path(),
        Some("cluster.config.resources.memoryManagement.memoryWarningTreshold")
    );
    assert_eq!(
        e.to_string(),
        "app.json:1:99: cluster.config.resources.memoryManagement.memoryWarningTreshold: \
         unknown key; did you mean `memoryWarningThreshold`?"
    );
    assert!(
        error(r#"{"autoScaling": {"max_workers": 4}}"#)
            .ends_with("autoScaling.max_workers: unknown key; did you mean `maxWorkers`?")
    );
}

#[test]
fn a_key_of_another_section_says_where_it_belongs() {
    assert!(
        error(r#"{"cluster": {"workers": 4}}"#)
            .ends_with("cluster.workers: unknown key; `workers` belongs in cluster.config")
    );
    assert!(error(r#"{"resources": {"swapUsageLimit": 4}}"#).ends_with(
        "resources.swapUsageLimit: unknown key; `swapUsageLimit` belongs in resources.memoryManagement"
    ));
}

#[test]
fn an_unknown_key_with_no_near_match_lists_the_keys() {
    assert_eq!(
        error(r#"{"autoScaling": {"scaleUpThreshold": {"disk": 90}}}"#),
        "app.json:1:44: autoScaling.scaleUpThreshold.disk: unknown key; the keys here are `memory`, `cpu`"
    );
    assert!(error(r#"{"database": {"port": 3000}}"#).ends_with(
        "database: unknown key; the keys here are `cluster`, `workers`, `resources`, `autoScaling`"
    ));
}

/// Checks that `json` is refused, naming `path`, and ends with `message`.
#[track_caller]
fn refused(json: &str, path: &str, message: &str) {
    let e = load(json).unwrap_err();
    assert_eq!(e.path(), Some(path), "{e}");
    assert_eq!(e.to_string(), message);
}

#[test]
fn impossible_values_are_named_by_their_path() {
    let mm = "cluster.config.resources.memoryManagement";
    refused(
        &outer(&memory_management(
            r#""memoryWarningThreshold": 90, "memoryCriticalThreshold": 90"#,
        )),
        &format!("{mm}.memoryCriticalThreshold"),
        &format!(
            "{mm}.memoryCriticalThreshold = 90 (in app.json) must be above \
             {mm}.memoryWarningThreshold = 90 (in app.json)"
        ),
    );
    refused(
        &memory_management(r#""memoryWarningThreshold": 96"#),
        "resources.memoryManagement.memoryCriticalThreshold",
        "resources.memoryManagement.memoryCriticalThreshold = 95 (the default) must be above \
         resources.memoryManagement.memoryWarningThreshold = 96 (in app.json)",
    );
    for bad in ["0", "-5", "100.5", "1000"] {
        refused(
            &memory_management(&format!(r#""swapUsageLimit": {bad}"#)),
            "resources.memoryManagement.swapUsageLimit",
            &format!(
                "resources.memoryManagement.swapUsageLimit = {bad} (in app.json): \
                 must be a percentage above 0 and at most 100"
            ),
        );
    }
    refused(
        r#"{"autoScaling": {"scaleUpThreshold": {"cpu": 0}}}"#,
        "autoScaling.scaleUpThreshold.cpu",
        "autoScaling.scaleUpThreshold.cpu = 0 (in app.json): must be a percentage above 0 and at most 100",
    );
    refused(
        r#"{"autoScaling": {"scaleDownThreshold": {"memory": 90}}}"#,
        "autoScaling.scaleUpThreshold.memory",
        "autoScaling.scaleUpThreshold.memory = 80 (the default) must be above \
         autoScaling.scaleDownThreshold.memory = 90 (in app.json)",
    );
    refused(
        r#"{"autoScaling": {"minWorkers": 4, "maxWorkers": 2}}"#,
        "autoScaling.minWorkers",
        "autoScaling.minWorkers = 4 (in app.json) must be at most autoScaling.maxWorkers = 2 (in app.json)",
    );
    refused(
        r#"{"autoScaling": {"minWorkers": 0}}"#,
        "autoScaling.minWorkers",
        "autoScaling.minWorkers = 0 (in app.json): must be from 1 to 4096 workers",
    );
    refused(
        &outer(r#"{"autoScaling": {"maxWorkers": 0}}"#),
        "cluster.config.autoScaling.maxWorkers",
        "cluster.config.autoScaling.maxWorkers = 0 (in app.json): must be from 1 to 4096 workers",
    );
    refused(
        r#"{"workers": 0}"#,
        "workers",
        "workers = 0 (in app.json): must be from 1 to 4096 workers",
    );
    refused(
        r#"{"workers": 8, "autoScaling": {"maxWorkers": 6}}"#,
        "workers",
        "workers = 8 (in app.json) must be at most autoScaling.maxWorkers = 6 (in app.json)",
    );
    refused(
        r#"{"resources": {"maxMemoryPerWorker": "1GB", "memoryManagement": {"maxTotalMemory": "2GB"}},
            "autoScaling": {"minWorkers": 3}}"#,
        "resources.maxMemoryPerWorker",
        "resources.maxMemoryPerWorker = 1GiB (in app.json) times autoScaling.minWorkers = 3 (in app.json) \
         is 3GiB, more than resources.memoryManagement.maxTotalMemory = 2GiB (in app.json): \
         the smallest pool would not fit",
    );
    refused(
        &memory_management(r#""memoryCheckInterval": 0"#),
        "resources.memoryManagement.memoryCheckInterval",
        "resources.memoryManagement.memoryCheckInterval = 0ms (in app.json): must be more than 0 milliseconds",
    );
    refused(
        r#"{"resources": {"maxMemoryPerWorker": 1000}}"#,
        "resources.maxMemoryPerWorker",
        "resources.maxMemoryPerWorker = 1000B (in app.json): must be at least 1MiB",
    );
    refused(
        r#"{"cluster": {"enabled": false}}"#,
        "cluster.enabled",
        "cluster.enabled = false (in app.json): xypriss always runs a pool of workers; \
         remove the key or set it to true",
    );
    refused(
        r#"{"cluster": {"enabled": true}, "workers": 4}"#,
        "workers",
        "app.json: workers: the file holds both the createServer options (`cluster`) \
         and a cluster.config key; use one shape",
    );
}

#[test]
fn the_budget_check_follows_memory_management() {
    let json = r#"{"resources": {"maxMemoryPerWorker": "1GB", "memoryManagement": {"enabled": false, "maxTotalMemory": "2GB"}},
                   "autoScaling": {"minWorkers": 3}}"#;
    assert_eq!(load(json).unwrap().min_workers, 3);
}

#[test]
fn wrong_types_are_named_by_their_path() {
    for (json, message) in [
        (
            r#"{"workers": true}"#.to_string(),
            "app.json:1:17: workers: expected \"auto\" or a whole number of workers, found `true`",
        ),
        (
            r#"{"workers": -2}"#.to_string(),
            "app.json:1:15: workers: expected \"auto\" or a whole number of workers, found the number -2",
        ),
        (
            outer(&memory_management(r#""memoryCheckInterval": "30s""#)),
            "app.json:1:105: cluster.config.resources.memoryManagement.memoryCheckInterval: \
             expected a whole number of milliseconds, such as 30000, found the string \"30s\"",
        ),
        (
            memory_management(r#""enabled": "yes""#),
            "app.json:1:52: resources.memoryManagement.enabled: invalid type: string \"yes\", expected a boolean",
        ),
        (
            memory_management(r#""memoryWarningThreshold": "80 percent""#),
            "app.json:1:75: resources.memoryManagement.memoryWarningThreshold: \
             expected a percentage, as a number such as 80 or a string such as \"0.5%\", \
             found the string \"80 percent\"",
        ),
        (
            r#"{"resources": [1, 2]}"#.to_string(),
            "app.json:1:14: resources: invalid type: sequence, expected an object",
        ),
        (
            r#"{"autoScaling": {"minWorkers": 1.5}}"#.to_string(),
            "app.json:1:35: autoScaling.minWorkers: expected a number of workers (a whole number from 1), found the number 1.5",
        ),
        (
            r#"[{"workers": 4}]"#.to_string(),
            "app.json:1:1: the top level: invalid type: sequence, expected an object",
        ),
        (
            r#""auto""#.to_string(),
            "app.json:1:6: the top level: invalid type: string \"auto\", expected an object",
        ),
    ] {
        assert_eq!(error(&json), message, "{json}");
    }
}

#[test]
fn broken_files_get_a_clear_error() {
    let cut = &BASIC[..BASIC.len() / 2];
    assert_eq!(
        error(cut),
        "app.json:12:1: the file ends in the middle of the JSON: is it truncated?"
    );
    assert_eq!(
        error("{\"workers\": 4,}"),
        "app.json:1:15: not valid JSON: trailing comma"
    );
    assert_eq!(
        error("{\"workers\": 4} {}"),
        "app.json:1:16: not valid JSON after the JSON object: trailing characters"
    );
    assert_eq!(
        error(" \n "),
        "app.json:1:1: the file is empty; expected a JSON object"
    );
    assert_eq!(
        load("\u{feff}{\"workers\": 3}").unwrap().workers,
        WorkerCount::Fixed(3)
    );
}

#[test]
fn non_utf8_bytes_are_refused_with_their_place() {
    let bytes = b"{\n  \"workers\": \"au\xfftomatic\"\n}";
    let e = merge::resolve(Some((Path::new(FILE), bytes)), &[]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "app.json:2:17: the file is not UTF-8 text; save it as UTF-8 JSON"
    );
}

#[test]
fn deeply_nested_junk_is_refused() {
    let deep = |open: &str, close: &str| format!("{}{}", open.repeat(10_000), close.repeat(10_000));
    assert_eq!(
        error(&deep("[", "]")),
        "app.json:1:1: the top level: invalid type: sequence, expected an object"
    );
    assert!(
        error(&format!(r#"{{"workers": {}}}"#, deep("[", "]")))
            .ends_with("nested more than 128 levels deep: not a configuration file")
    );
    assert!(
        error(&format!(
            r#"{{"resources": {{"maxMemoryPerWorker": {}}}}}"#,
            deep("{\"a\":", "}")
        ))
        .ends_with("nested more than 128 levels deep: not a configuration file")
    );
    assert!(
        error(&format!(r#"{{"junk": {}}}"#, deep("[", "]"))).ends_with(
            "junk: unknown key; the keys here are `cluster`, `workers`, `resources`, `autoScaling`"
        )
    );
}

#[test]
fn a_huge_value_makes_a_short_error() {
    let huge = "x".repeat(100_000);
    for json in [
        memory_management(&format!(r#""enabled": "{huge}""#)),
        memory_management(&format!(r#""maxTotalMemory": "{huge}""#)),
    ] {
        let e = error(&json);
        assert!(e.chars().count() < 300 && e.ends_with("xxx…"), "{e}");
        assert!(e.contains("resources.memoryManagement."), "{e}");
    }
}

#[test]
fn a_file_over_the_cap_is_refused_unread() {
    let file = TempFile::new("huge.json");
    OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&file.0)
        .unwrap()
        .set_len(100 << 20)
        .unwrap();
    let e = resolve(Some(&file.0), &[]).unwrap_err();
    assert!(matches!(e, ConfigError::TooLarge { len: Some(len), .. } if len == 100 << 20));
    assert_eq!(
        e.to_string(),
        format!(
            "--config {}: 100MiB is over the 1MiB limit for a configuration file; is it the right file?",
            file.0.display()
        )
    );
}

#[test]
fn a_missing_file_is_named() {
    let e = resolve(Some(Path::new("/nonexistent/app.json")), &[]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "--config /nonexistent/app.json: No such file or directory (os error 2)"
    );
}

//! The flags beside the file: which wins, how each is named, and the
//! docs' table of options against the flags that set them.

use super::*;

#[test]
fn flags_override_the_file() {
    let file = TempFile::with("advanced.json", outer(ADVANCED_CONFIG).as_bytes());
    let options = resolve(
        Some(&file.0),
        &[
            "--swap-usage-limit",
            "20",
            "--enforce-hard-limits",
            "true",
            "--auto-scaling",
            "false",
            "--memory-check-interval",
            "5s",
            "--workers",
            "6",
            "--memory-critical-threshold",
            "90",
            "--max-workers",
            "8",
        ],
    )
    .unwrap();
    let config = &options.memory;
    assert_eq!(config.memory_management.swap_usage_limit, 20.0);
    assert!(config.enforcement.enforce_hard_limits);
    assert!(!config.auto_scaling.enabled);
    assert_eq!(
        config.memory_management.memory_check_interval,
        Duration::from_secs(5)
    );
    assert_eq!(options.workers, WorkerCount::Fixed(6));
    assert_eq!(config.memory_management.memory_critical_threshold, 90.0);
    assert_eq!(options.max_workers, 8);
    // Untouched by flags: the file's.
    assert_eq!(config.memory_management.memory_warning_threshold, 70.0);
    assert_eq!(config.max_memory_per_worker, 256 << 20);
    assert!(config.performance_optimization.memory_pooling);
}

#[test]
fn a_flag_is_named_by_its_flag() {
    let json = outer(&memory_management(r#""memoryWarningThreshold": 80"#));
    let e = load_with(&json, &["--memory-critical-threshold", "70"]).unwrap_err();
    assert_eq!(e.path(), Some("--memory-critical-threshold"));
    assert_eq!(
        e.to_string(),
        "--memory-critical-threshold 70 must be above \
         cluster.config.resources.memoryManagement.memoryWarningThreshold = 80 (in app.json)"
    );
    assert_eq!(
        resolve(None, &["--max-total-memory", "1GB", "--min-workers", "4"])
            .unwrap_err()
            .to_string(),
        "resources.maxMemoryPerWorker = 512MiB (the default) times --min-workers 4 is 2GiB, \
         more than --max-total-memory 1GiB: the smallest pool would not fit"
    );
}

/// The run flags, which hold the memory flags.
#[derive(Parser, Debug)]
struct WithRun {
    #[command(flatten)]
    run: RunFlags,
}

#[test]
fn flags_parse_and_negative_numbers_reach_the_checks() {
    let parsed = flags(&[
        "--enforce-hard-limits",
        "false",
        "--low-memory-mode",
        "yes",
        "--memory-check-interval",
        "15000",
        "--max-total-memory",
        "8 GB",
        "--scale-up-cpu-threshold",
        "90",
    ])
    .unwrap();
    assert_eq!(parsed.get(&defs::HARD_LIMITS), Some(Value::Bool(false)));
    assert_eq!(
        parsed.get(&defs::MM_LOW_MEMORY_MODE),
        Some(Value::Bool(true))
    );
    assert_eq!(
        parsed.get(&defs::CHECK_INTERVAL),
        Some(Value::Millis(Duration::from_secs(15)))
    );
    assert_eq!(
        parsed.get(&defs::MAX_TOTAL_MEMORY),
        Some(Value::Size(8 << 30))
    );
    assert_eq!(parsed.get(&defs::UP_CPU), Some(Value::Percent(90.0)));
    assert_eq!(parsed.get(&defs::AS_ENABLED), None);
    assert_eq!(
        flags(&["--memory-check-interval", "30s"])
            .unwrap()
            .get(&defs::CHECK_INTERVAL),
        Some(Value::Millis(Duration::from_secs(30)))
    );

    assert_eq!(
        resolve(None, &["--swap-usage-limit", "-5"])
            .unwrap_err()
            .to_string(),
        "--swap-usage-limit -5: must be a percentage above 0 and at most 100"
    );
    assert_eq!(
        resolve(None, &["--memory-check-interval", "0"])
            .unwrap_err()
            .to_string(),
        "--memory-check-interval 0ms: must be more than 0 milliseconds"
    );
    let e = flags(&["--max-total-memory", "-1MB"])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--max-total-memory") && e.contains("is negative"),
        "{e}"
    );
    let e = flags(&["--memory-check-interval", "-5"])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--memory-check-interval") && e.contains("not a duration"),
        "{e}"
    );
    let e = flags(&["--enforce-hard-limits"]).unwrap_err().to_string();
    assert!(e.contains("--enforce-hard-limits"), "{e}");
}

#[test]
fn memory_flags_sit_beside_the_run_flags() {
    WithRun::command().debug_assert();
    let parsed = WithRun::try_parse_from([
        "xypriss",
        "--config",
        "app.json",
        "--low-memory-mode",
        "true",
        "node",
        "app.js",
    ])
    .unwrap();
    assert_eq!(parsed.run.config.config, Some(PathBuf::from("app.json")));
    assert_eq!(
        parsed.run.config.get(&defs::MM_LOW_MEMORY_MODE),
        Some(Value::Bool(true))
    );
    assert_eq!(parsed.run.command, ["node", "app.js"]);
}

#[test]
fn every_option_has_one_flag_and_its_row_in_the_docs() {
    let run = WithRun::command();
    for opt in defs::ALL {
        assert_eq!(
            run.get_arguments()
                .filter(|a| a.get_long() == Some(opt.flag))
                .count(),
            1,
            "--{}",
            opt.flag
        );
        assert_eq!(
            defs::ALL.iter().filter(|o| o.path == opt.path).count(),
            1,
            "{} is declared twice",
            opt.path
        );
    }
    // The table in docs/configuration.md is made from the definitions:
    // between its markers, one row per option, in their order.
    let docs = include_str!("../../../../docs/configuration.md");
    let table = docs
        .split_once(TABLE_START)
        .and_then(|(_, rest)| rest.split_once(TABLE_END))
        .map(|(table, _)| table.trim())
        .expect("docs/configuration.md has the table's markers");
    let rows: Vec<String> = defs::ALL.iter().map(defs::Opt::doc_row).collect();
    let expected = format!("{TABLE_HEAD}\n{}", rows.join("\n"));
    assert!(
        table == expected,
        "docs/configuration.md's table is not the definitions'; put this between its markers:\n{expected}"
    );
}

const TABLE_START: &str = "<!-- options: made from xypriss/src/flags/defs.rs; the test every_option_has_one_flag_and_its_row_in_the_docs checks it -->";
const TABLE_END: &str = "<!-- end of options -->";
const TABLE_HEAD: &str =
    "| JSON path | Flag | Default | What it does in xypriss |\n| --- | --- | --- | --- |";

#[test]
fn the_documented_defaults_are_the_defaults() {
    let defaults = Options::default();
    for opt in defs::ALL {
        assert_eq!(
            opt.slot.parse_flag(opt.default),
            Ok(opt.slot.get(&defaults)),
            "{}",
            opt.path
        );
    }
}

//! §8 command line and configuration file.

use fedbroker_tests::*;

use crate::support::assert_usage_error;

adapter_tests! {
    /// `--help` exits 0 and lists the flags.
    fn help_exits_zero(a: Adapter) {
        let out = run_cli(a, &["--help"]);
        assert_eq!(out.code(), 0, "{out:?}");
        assert!(
            out.stdout.contains("--listen"),
            "--help should document --listen: {out:?}"
        );
    }

    /// `--help` is man-page style: every flag says what it does, its default and an example.
    fn help_documents_every_flag(a: Adapter) {
        let out = run_cli(a, &["--help"]);
        assert_eq!(out.code(), 0, "{out:?}");
        let options = out
            .stdout
            .split("\nOptions:\n")
            .nth(1)
            .expect("an Options: section")
            .split("\n\n")
            .filter(|block| block.trim_start().starts_with("--"));
        let mut flags = 0;
        for block in options {
            flags += 1;
            for needle in ["Default:", "Example:"] {
                assert!(block.contains(needle), "--help of this flag lacks {needle:?}:\n{block}");
            }
        }
        assert!(flags >= 20, "only {flags} flags documented:\n{}", out.stdout);
        assert!(out.stdout.contains("EXIT CODES"), "{}", out.stdout);
    }

    /// `--version` exits 0 and prints the crate version, which the statistics report too (§7).
    fn version_matches_statistics(a: Adapter) {
        let out = run_cli(a, &["--version"]);
        assert_eq!(out.code(), 0, "{out:?}");
        assert!(
            out.stdout.contains("0.1.0"),
            "--version should print 0.1.0: {out:?}"
        );
        let broker = Broker::start(a, &[]);
        let version = broker.stats()["version"].as_str().map(str::to_owned);
        let version = version.expect("statistics `version` is a string");
        assert!(
            out.stdout.contains(&version),
            "statistics version {version:?} vs --version {:?}",
            out.stdout
        );
    }

    /// An unknown flag is a usage error naming it.
    fn unknown_flag_exits_2(a: Adapter) {
        let out = run_cli(a, &["--listen", "127.0.0.1:0", "--no-such-flag"]);
        assert_usage_error(&out, &["no-such-flag"]);
    }

    /// Flag values that do not parse are usage errors naming the flag or the value.
    fn bad_flag_values_exit_2(a: Adapter) {
        let cases: [(&[&str], &[&str]); 5] = [
            (
                &["--listen", "not-an-address"],
                &["listen", "not-an-address"],
            ),
            (
                &["--listen", "127.0.0.1:0", "--queue-limit", "many"],
                &["queue-limit", "queue_limit", "many"],
            ),
            (
                &["--listen", "127.0.0.1:0", "--max-message-size", "-1"],
                &["max-message-size", "max_message_size", "-1"],
            ),
            (
                &["--listen", "127.0.0.1:0", "--ping-interval", "soon"],
                &["ping-interval", "ping_interval", "soon"],
            ),
            (
                &["--listen", "127.0.0.1:0", "--request-timeout"],
                &["request-timeout", "request_timeout"],
            ),
        ];
        for (args, names) in cases {
            assert_usage_error(&run_cli(a, args), names);
        }
    }

    /// An unknown key in the config file is an error naming the key.
    fn config_unknown_key_exits_2(a: Adapter) {
        let dir = TempDir::new();
        let path = dir.write("c.toml", "listen = [\"127.0.0.1:0\"]\nno_such_key = 1\n");
        let out = run_cli(a, &["--config", path.to_str().unwrap()]);
        assert_usage_error(&out, &["no_such_key"]);
    }

    /// A config value of the wrong type is an error naming the key or the value.
    fn config_wrong_type_exits_2(a: Adapter) {
        let dir = TempDir::new();
        let path = dir.write(
            "c.toml",
            "listen = [\"127.0.0.1:0\"]\nqueue_limit = \"four\"\n",
        );
        let out = run_cli(a, &["--config", path.to_str().unwrap()]);
        assert_usage_error(&out, &["queue_limit", "queue-limit", "four"]);
    }

    /// A config file that is not TOML is an error naming the file.
    fn config_bad_toml_exits_2(a: Adapter) {
        let dir = TempDir::new();
        let path = dir.write("broken.toml", "listen = [\"127.0.0.1:0\"\n");
        let out = run_cli(a, &["--config", path.to_str().unwrap()]);
        assert_usage_error(&out, &["broken.toml", "toml", "config"]);
    }

    /// A missing config file is an error naming the file.
    fn config_missing_file_exits_2(a: Adapter) {
        let dir = TempDir::new();
        let path = dir.path().join("absent.toml");
        let out = run_cli(
            a,
            &[
                "--listen",
                "127.0.0.1:0",
                "--config",
                path.to_str().unwrap(),
            ],
        );
        assert_usage_error(&out, &["absent.toml"]);
    }

    /// Settings from `--config` apply: listen address, base path, message size limit.
    fn config_file_applies_settings(a: Adapter) {
        let broker = Broker::builder(a)
            .config("listen = [\"127.0.0.1:0\"]\nbase_path = \"/mq\"\nmax_message_size = 100\nqueue_limit = 4\n")
            .expect_listeners(1)
            .start();
        let mut listener = Listener::connect(broker.addr(), "/mq/42");
        let body = random_bytes(1, 100);
        broker.connect().post("/mq/42", &body).assert_status(204);
        assert_eq!(listener.recv(), body);
        broker
            .connect()
            .post("/mq/42", &random_bytes(2, 101))
            .assert_error(413);
        broker.connect().stats("/mq/");
    }

    /// Flags win over the config file.
    fn flags_win_over_config(a: Adapter) {
        let broker = Broker::builder(a)
            .config("max_message_size = 100\n")
            .args(&["--max-message-size", "200"])
            .start();
        let mut listener = broker.listen(42);
        let body = random_bytes(3, 150);
        broker.post(42, &body).assert_status(204);
        assert_eq!(listener.recv(), body);
    }
}

//! `eodata-mount search` against the double: friendly criteria find the tutorial's product (and
//! only when they should), output formats, and one-line errors for bad input.

mod support;

use support::*;

fn double() -> fake_creodias::Double {
    start_double(double_config(Some(&products(1, 1))))
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_day_of_a_collection_lists_the_tutorials_product() {
    let double = double();
    let ws = Workspace::new();
    let args = [
        "search",
        "--collection",
        "SENTINEL-2",
        "--from",
        "2018-09-27",
        "--to",
        "2018-09-28",
    ];
    let out = ws.run(&double, &args);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), format!("{TUTORIAL_NAME}\n"));

    // The day before and a box elsewhere find nothing; the product's own box, level, name
    // part and online test find it.
    let none = [
        &[
            "search",
            "--collection",
            "SENTINEL-2",
            "--from",
            "2018-09-26",
            "--to",
            "2018-09-27",
        ][..],
        &["search", "--collection", "SENTINEL-1"],
        &["search", "--bbox", "0,0,1,1"],
        &["search", "--level", "L2A"],
    ];
    for a in none {
        let out = ws.run(&double, a);
        assert!(out.status.success(), "{a:?}: {out:?}");
        assert_eq!(stdout(&out), "", "{a:?}");
    }
    let some = [
        &["search", "--bbox", "60,-60,80,-40", "--level", "L1C"][..],
        &["search", "--name", "T42FXL", "--online-only"],
        &[
            "search",
            "--filter",
            "ContentLength gt 0",
            "--from",
            "2018-09-27T05:00:00Z",
        ],
    ];
    for a in some {
        let out = ws.run(&double, a);
        assert!(out.status.success(), "{a:?}: {out:?}");
        assert_eq!(stdout(&out), format!("{TUTORIAL_NAME}\n"), "{a:?}");
    }
    // The filters sent are the services' dialect.
    let log = double.log();
    let sent: Vec<&str> = log
        .iter()
        .filter(|e| e.service == "catalogue")
        .map(|e| e.path.as_str())
        .collect();
    assert!(
        sent.iter().any(|p| p.contains("OData.CSC.Intersects")),
        "{sent:?}"
    );
    assert!(sent.iter().all(|p| !p.contains("datetime")), "{sent:?}");
}

#[test]
fn long_and_json_outputs() {
    let double = double();
    let ws = Workspace::new();
    let out = ws.run(&double, &["search", "--collection", "SENTINEL-2", "--long"]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    let mut lines = text.lines();
    assert!(lines.next().unwrap().starts_with("NAME\tSTART"), "{text}");
    let row = lines.next().unwrap();
    assert!(
        row.starts_with(&format!("{TUTORIAL_NAME}\t2018-09-27T05:12:21.024Z\t")),
        "{row}"
    );
    assert!(row.ends_with(TUTORIAL_ID), "{row}");

    let out = ws.run(&double, &["search", "--name", "T42FXL", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json[0]["Id"], TUTORIAL_ID);
    assert_eq!(json[0]["Name"], TUTORIAL_NAME);
    assert_eq!(json[0]["Online"], true);
    assert!(json[0]["S3Path"]
        .as_str()
        .unwrap()
        .starts_with("/eodata/Sentinel-2/MSI/L1C/2018/09/27/"));
}

#[test]
fn bad_input_is_one_line_and_exit_2() {
    let double = double();
    let ws = Workspace::new();
    let cases = [
        (&["search", "--from", "2018-02-30x"][..], "bad date"),
        (&["search", "--to", "yesterday"], "bad date"),
        (&["search", "--bbox", "1,2,3"], "bad bounding box"),
        (&["search", "--bbox", "10,50,5,60"], "bad bounding box"),
        (
            &["search", "--from", "2018-09-28", "--to", "2018-09-27"],
            "is not before",
        ),
        (&["search", "--cloud-max", "150"], "bad cloud cover"),
        (
            &["search", "--geometry", "/nonexistent.geojson"],
            "cannot read the geometry",
        ),
    ];
    for (args, what) in cases {
        let out = ws.run(&double, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(what), "{args:?}: {err}");
        assert!(out.stdout.is_empty());
    }
    assert!(
        double.log().iter().all(|e| e.service != "catalogue"),
        "no request for bad input"
    );
}

/// `download` takes the same criteria as `search` (the same filter code) and downloads what
/// they find; `--query` is a raw filter, as a query directory takes it.
#[test]
fn download_takes_the_search_criteria() {
    let products = products(1, 1);
    let double = start_double(double_config(Some(&products)));
    let ws = Workspace::new();
    let out = ws.run(
        &double,
        &[
            "download",
            "-q",
            "--collection",
            "SENTINEL-2",
            "--from",
            "2018-09-27",
            "--to",
            "2018-09-28",
            "-o",
            "newdir/",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let file = ws.path().join(format!("newdir/{TUTORIAL_NAME}.zip"));
    assert_eq!(file_sha256(&file), file_sha256(&product_file(&products, 0)));
    // A raw filter that finds it too (the file is there: skipped, no download).
    let out = ws.run(
        &double,
        &[
            "download",
            "-q",
            "--query",
            "contains(Name,'T42FXL')",
            "-o",
            "newdir/",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    // Criteria that find nothing: one line, non-zero, nothing written.
    let out = ws.run(
        &double,
        &[
            "download",
            "-q",
            "--collection",
            "SENTINEL-1",
            "-o",
            "none/",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no product matches"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!ws.path().join("none").exists());
}

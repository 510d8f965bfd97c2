//! Recording name and folder templates: placeholders filled in, bad
//! templates refused with the reason, and a folder that no value can turn
//! into an absolute path or a climb out of its destination.

use rakkr_protocol::schedule::{TemplateVars, check_template, render_template};

fn vars(schedule: &str, node: &str) -> TemplateVars {
    TemplateVars {
        schedule: schedule.into(),
        node: node.into(),
        occurrence: "2026-03-29".into(),
        start: ("2026-03-29".parse().unwrap(), "07:05".parse().unwrap()),
    }
}

#[test]
fn placeholders_are_filled_in() {
    let v = vars("Morning show", "stage-left");
    assert_eq!(
        render_template("{schedule} {date} {time}", &v, false).unwrap(),
        "Morning show 2026-03-29 0705"
    );
    assert_eq!(
        render_template("{node}/{year}/{month}/{day}", &v, true).unwrap(),
        "stage-left/2026/03/29"
    );
}

#[test]
fn values_cannot_climb_out_of_a_folder() {
    for schedule in [
        "../../etc",
        "/abs",
        "a/b",
        "..",
        ".hidden",
        "back\\slash",
        "tab\there",
    ] {
        let folder = render_template("{schedule}/{date}", &vars(schedule, "n"), true).unwrap();
        let first = folder.split('/').next().unwrap();
        assert!(
            !first.is_empty()
                && first != "."
                && first != ".."
                && !first.starts_with('.')
                && !first.contains('\\')
                && !first.chars().any(char::is_control),
            "{schedule:?} gave {folder:?}"
        );
        assert_eq!(folder.split('/').count(), 2, "{schedule:?} gave {folder:?}");
    }
    assert_eq!(
        render_template("{schedule}", &vars("a:b", "n"), true).unwrap(),
        "a-b",
        "no characters SMB refuses"
    );
    // A part longer than file systems allow is refused, not cut.
    let long = "x".repeat(300);
    assert!(
        render_template("{schedule}", &vars(&long, "n"), true)
            .unwrap_err()
            .contains("at most 255 bytes")
    );
    // A name is not a path: it keeps its slashes, loses control characters.
    assert_eq!(
        render_template("{schedule}", &vars("A/B\nC", "n"), false).unwrap(),
        "A/B C"
    );
}

#[test]
fn bad_templates_are_refused_with_the_reason() {
    for (template, folder, expect) in [
        ("{schedule", false, "a '{' without its '}'"),
        ("schedule}", false, "a '}' without its '{'"),
        (
            "{when}",
            false,
            "{when} is not a placeholder; use {schedule}, {node}",
        ),
        ("", false, "a template is 1 to 200 bytes"),
        ("/{node}", true, "a folder is a relative path"),
        ("a\\{node}", true, "a folder is a relative path"),
        ("{node}//{date}", true, "no empty, '.' or '..' parts"),
        ("{node}/../x", true, "no empty, '.' or '..' parts"),
        ("{node}/./x", true, "no empty, '.' or '..' parts"),
        ("a\tb", false, "no control characters"),
    ] {
        let e = check_template(template, folder).unwrap_err();
        assert!(e.contains(expect), "{template:?}: {e}");
    }
    let long = "x".repeat(201);
    assert!(check_template(&long, false).is_err());
    assert!(check_template("{node}/{year}/{month}", true).is_ok());
    assert!(check_template("{schedule} – {date}", false).is_ok());
}

use super::*;

#[test]
fn renders_sections_conversation_and_prefill() {
    let src = "### system\nBe brief.\n### conversation\n### assistant\n{response}\n### user\n{critique_request} {{ok}}\n### prefill\nCritique:";
    let t = Template::parse(TemplateKind::Critique, src).unwrap();
    let conv = [
        ChatMessage::user("hi"),
        ChatMessage::assistant("yo"),
        ChatMessage::user("q"),
    ];
    let p = t
        .render(
            &Vars::new(&conv)
                .set("response", "R")
                .set("critique_request", "Why?"),
        )
        .unwrap();
    assert_eq!(
        p.messages,
        vec![
            ChatMessage::system("Be brief."),
            ChatMessage::user("hi"),
            ChatMessage::assistant("yo"),
            ChatMessage::user("q"),
            ChatMessage::assistant("R"),
            ChatMessage::user("Why? {ok}"),
        ]
    );
    assert_eq!(p.prefill, "Critique:");
}

#[test]
fn missing_value_is_an_error() {
    let t = Template::builtin(TemplateKind::Critique);
    let e = t.render(&Vars::new(&[]).set("response", "R")).unwrap_err();
    assert!(
        e.to_string()
            .contains("no value for placeholder `{critique_request}`"),
        "{e}"
    );
}

#[test]
fn unknown_and_missing_placeholders_rejected() {
    let e = Template::parse(
        TemplateKind::Critique,
        "### conversation\n### user\n{response} {critique_request} {nope}",
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("unknown placeholder `{nope}`"),
        "{e}"
    );
    let e = Template::parse(
        TemplateKind::Critique,
        "### conversation\n### user\n{response}",
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("missing placeholder `{critique_request}`"),
        "{e}"
    );
    let e = Template::parse(
        TemplateKind::Critique,
        "### user\n{response} {critique_request}",
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("needs a `### conversation` section"),
        "{e}"
    );
}

#[test]
fn syntax_errors_name_the_problem() {
    for (src, want) in [
        ("hello\n### user\nx", "line 1: text before"),
        ("### bot\nx", "unknown section `### bot`"),
        ("### prefill\nx\n### user\ny", "must be the last section"),
        (
            "### conversation\n### user\n{response {critique_request}",
            "bad character",
        ),
        (
            "### conversation\n### user\n{response} {critique_request} }",
            "stray `}`",
        ),
    ] {
        let e = format!(
            "{:#}",
            Template::parse(TemplateKind::Critique, src).unwrap_err()
        );
        assert!(e.contains(want), "{src:?}: {e}");
    }
}

#[test]
fn builtin_templates_parse() {
    for k in TemplateKind::ALL {
        let _ = Template::builtin(k);
    }
}

#[cfg(unix)]
#[test]
fn a_special_file_in_the_templates_dir_is_refused_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("/dev/zero", dir.path().join("critique.txt")).unwrap();
    let e = format!("{:#}", PromptSet::load(&[], Some(dir.path())).unwrap_err());
    assert!(e.contains("critique.txt") || e.contains("/dev/zero"), "{e}");
    assert!(e.contains("not a regular file"), "{e}");
}

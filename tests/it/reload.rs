//! Hot reload: a saved edit takes effect within 2 seconds without a restart; a broken edit keeps
//! the old rules serving and shows every error in `/api/status` and `POST /-/reload`.

use crate::util::{HttpPeer, Router, fixture};
use std::time::{Duration, Instant};

fn rules(peer: &HttpPeer, path: &str) -> String {
    format!(
        "rules:\n  - name: reply\n    when: {{ event: EMAIL_REPLIED }}\n    actions:\n      - http: {{ url: \"{}\", body: '{{}}' }}\n",
        peer.url(path)
    )
}

/// Saves like an editor does: write a new file, rename it over the old one.
fn save(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("yaml.swp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn a_saved_edit_takes_effect_within_two_seconds() {
    let peer = HttpPeer::start().await;
    let router = Router::start(&rules(&peer, "/before"), &[]).await;
    let hash_before = router.config_hash().await;
    save(&router.rules_path(), &rules(&peer, "/after"));
    let saved = Instant::now();
    router
        .wait_status("the reload", |s| s["config_hash"] != hash_before.as_str())
        .await;
    assert!(
        saved.elapsed() < Duration::from_secs(2),
        "reload took {:?}",
        saved.elapsed()
    );
    router
        .post(&crate::util::unique(fixture("real_13_email_reply")))
        .await;
    let got = peer.wait_for(1).await;
    assert_eq!(got[0].path, "/after");

    // A second edit works too: the watch survives the rename.
    save(&router.rules_path(), &rules(&peer, "/again"));
    let h = router.config_hash().await;
    router
        .wait_status("the second reload", |s| s["config_hash"] != h.as_str())
        .await;
    router
        .post(&crate::util::unique(fixture("real_13_email_reply")))
        .await;
    let got = peer.wait_for(2).await;
    assert_eq!(got[1].path, "/again");
}

#[tokio::test]
async fn a_broken_edit_keeps_the_old_rules_and_reports_every_error() {
    let peer = HttpPeer::start().await;
    let router = Router::start(&rules(&peer, "/old"), &[]).await;
    let broken = format!(
        "rules:\n  - name: reply\n    when: {{ event: EMAIL_REPLIED, fields: {{ reply.text: {{ matches: '(oops' }} }} }}\n    actions:\n      - http: {{ url: \"{}\", body: '{{}}' }}\n      - slack: {{ destination: nowhere, text: hi }}\n",
        peer.url("/new")
    );
    save(&router.rules_path(), &broken);
    let status = router
        .wait_status("the failed reload", |s| s["last_reload"]["ok"] == false)
        .await;
    assert_eq!(status["last_reload"]["ok"], false, "{status}");
    let errors = status["last_reload"]["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2, "{status}");
    assert!(
        errors.iter().any(|e| e["line"] == 3
            && e["message"]
                .as_str()
                .unwrap()
                .contains("regular expression")),
        "{status}"
    );
    assert!(
        errors.iter().any(|e| e["line"] == 6
            && e["message"]
                .as_str()
                .unwrap()
                .contains("unknown destination \"nowhere\"")),
        "{status}"
    );
    assert!(
        errors
            .iter()
            .all(|e| e["file"].as_str().unwrap().ends_with("rules.yaml")
                && e["column"].as_u64().unwrap() > 0)
    );

    let (_, metrics) = router.get("/metrics").await;
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("switchboard_config_last_reload_successful 0")
    );

    let r = reqwest::Client::new()
        .post(router.url("/-/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["errors"].as_array().unwrap().len(), 2, "{body}");

    router
        .post(&crate::util::unique(fixture("real_13_email_reply")))
        .await;
    let got = peer.wait_for(1).await;
    assert_eq!(got[0].path, "/old", "the old rules keep serving");

    // Fixing the file and asking for a reload brings the new rules in.
    std::fs::write(router.rules_path(), rules(&peer, "/fixed")).unwrap();
    let r = reqwest::Client::new()
        .post(router.url("/-/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    router
        .post(&crate::util::unique(fixture("real_13_email_reply")))
        .await;
    let got = peer.wait_for(2).await;
    assert_eq!(got[1].path, "/fixed");
}

/// A reload keeps the serving rules it finds written the same (it shares them rather than
/// holding two copies), yet what they name changes under them: an edited destination takes
/// effect for the unchanged rule that names it, and an edited rule for itself alone.
#[tokio::test]
async fn an_edit_reaches_the_unchanged_rules_that_name_what_changed() {
    let peer = HttpPeer::start().await;
    let text = |destination: &str, inline: &str| {
        format!(
            "destinations:\n  crm:\n    http: {{ url: \"{}\", body: '{{}}' }}\nrules:\n  - name: by-destination\n    when: {{ event: EMAIL_REPLIED }}\n    actions:\n      - http: {{ destination: crm }}\n  - name: inline\n    when: {{ event: EMAIL_REPLIED }}\n    actions:\n      - http: {{ url: \"{}\", body: '{{}}' }}\n",
            peer.url(destination),
            peer.url(inline)
        )
    };
    let router = Router::start(&text("/crm-1", "/inline-1"), &[]).await;
    let mut expected = vec!["/crm-1", "/inline-1"];
    for (step, (destination, inline)) in [("/crm-2", "/inline-1"), ("/crm-2", "/inline-3")]
        .into_iter()
        .enumerate()
    {
        router
            .post(&crate::util::unique(fixture("real_13_email_reply")))
            .await;
        let got = peer.wait_for(2 * (step + 1)).await;
        let mut paths: Vec<&str> = got[2 * step..].iter().map(|r| r.path.as_str()).collect();
        paths.sort_unstable();
        assert_eq!(paths, expected, "before edit {}", step + 1);
        let hash = router.config_hash().await;
        save(&router.rules_path(), &text(destination, inline));
        router
            .wait_status("the reload", |s| s["config_hash"] != hash.as_str())
            .await;
        expected = vec![destination, inline];
    }
    router
        .post(&crate::util::unique(fixture("real_13_email_reply")))
        .await;
    let got = peer.wait_for(6).await;
    let mut paths: Vec<&str> = got[4..].iter().map(|r| r.path.as_str()).collect();
    paths.sort_unstable();
    assert_eq!(paths, expected, "after the last edit");
}

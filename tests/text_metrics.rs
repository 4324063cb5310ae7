//! loratune's text metrics against the reference scores of
//! scripts/reference/make_text_metrics_fixture.py (ROUGE-L from Google's rouge-score,
//! exact match and token F1 by SQuAD's definitions).

use crate::common;

use loratune::eval::text_metrics::{exact_match, json_valid, rouge_l, token_f1};

#[test]
fn scores_equal_the_reference_implementations() {
    let fixture = common::fixture("text_metrics.json");
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 20);
    for c in cases {
        let (pred, reference) = (c["prediction"].as_str().unwrap(), c["reference"].as_str().unwrap());
        let at = format!("prediction {pred:?}, reference {reference:?}");
        let close = |got: f64, want: &serde_json::Value, what: &str| {
            let want = want.as_f64().unwrap();
            assert!((got - want).abs() < 1e-12, "{what}: {got} vs {want} for {at}");
        };
        close(exact_match(pred, reference), &c["exact_match"], "exact match");
        close(token_f1(pred, reference), &c["token_f1"], "token F1");
        let rl = rouge_l(pred, reference);
        close(rl.p, &c["rouge_l"]["p"], "ROUGE-L precision");
        close(rl.r, &c["rouge_l"]["r"], "ROUGE-L recall");
        close(rl.f, &c["rouge_l"]["f"], "ROUGE-L F");
        assert_eq!(json_valid(pred, reference), c["json_valid"].as_bool(), "JSON validity for {at}");
    }
}

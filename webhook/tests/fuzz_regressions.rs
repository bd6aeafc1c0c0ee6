//! Inputs the fuzz targets (fuzz/, scripts/fuzz.sh) found, as regression tests. Each input is also in
//! fuzz/corpus/<target>/.

use tollgate_webhook::policy::Policy;
use tollgate_webhook::quantity::{Format, Quantity};

/// fuzz target `quantity` (corpus: 1E): `E` alone is the exa suffix (DecimalSI), not an exponent, so its
/// canonical form stays `1E` as kube-apiserver keeps it (it was `1e18`, which did not read back as itself).
#[test]
fn exa_without_an_exponent_is_decimal_si() {
    assert_eq!(Format::of("1E"), Format::DecimalSI);
    assert_eq!(Format::of("1E3"), Format::DecimalExponent);
    assert_eq!(Format::of("1e-3"), Format::DecimalExponent);
    for (written, canonical) in [("1E", "1E"), ("1.5E", "1500P"), ("2E", "2E")] {
        let value: Quantity = written.parse().unwrap();
        let text = value.canonical(Format::of(written));
        assert_eq!(text, canonical, "{written}");
        assert_eq!(text.parse::<Quantity>().unwrap().canonical(Format::of(&text)), text, "{written}: reads back as itself");
    }
    let policy = Policy::from_yaml("resources: { maximum: { cpu: '8', memory: 1E, ephemeral-storage: 50Gi } }\n").unwrap();
    assert_eq!(policy.resources.maximum["memory"].text, "1E");
}

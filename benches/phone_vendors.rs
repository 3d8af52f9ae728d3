//! Render throughput and latency of the shipped phone templates: for one
//! model per vendor family, every per-device and every model-common file
//! rendered from the realistic context of `vendors::sample` (two lines, the
//! seed's phone book, codecs and ringtone, keys, native parameters) with the
//! strict-mode registry the core uses. Also the cost of naming a unit's
//! files and of resolving a request name through every vendor grammar.
//! Prints renders/s and p50/p99 per render; one thread.

use std::hint::black_box;
use std::time::{Duration, Instant};

use caldera::domains::phones::mac::Mac;
use caldera::domains::phones::vendors::{
    FileClass, FileSpec, ModelRef, by_brand, catalogue, effective_model, registry, sample,
    vendors_claiming,
};

const MODELS: [(&str, &str); 7] = [
    ("yealink", "t46s"),
    ("polycom", "vvx500"),
    ("cisco", "spa504g"),
    ("cisco", "cp-8841-3pcc"),
    ("grandstream", "gxp2170"),
    ("snom", "d785"),
    ("fanvil", "x5u"),
];

/// How long each measurement runs.
const BUDGET: Duration = Duration::from_millis(700);

struct Stats {
    count: usize,
    elapsed: Duration,
    samples: Vec<Duration>,
    bytes: usize,
}

impl Stats {
    fn per_second(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&mut self, p: f64) -> Duration {
        self.samples.sort_unstable();
        let index = ((self.samples.len() as f64 - 1.0) * p).round() as usize;
        self.samples[index]
    }
}

/// Runs `work` (one unit of work returning its output size) for `BUDGET`.
fn measure(mut work: impl FnMut() -> usize) -> Stats {
    for _ in 0..20 {
        black_box(work());
    }
    let mut samples = Vec::new();
    let mut bytes = 0;
    let start = Instant::now();
    while start.elapsed() < BUDGET {
        let one = Instant::now();
        bytes += black_box(work());
        samples.push(one.elapsed());
    }
    Stats {
        count: samples.len(),
        elapsed: start.elapsed(),
        samples,
        bytes,
    }
}

fn main() {
    let registry = registry().expect("shipped templates compile");
    let mac = Mac::parse("805ec0123456").expect("a MAC");
    println!("phone vendor renders (one thread, strict mode, sample context)");
    println!(
        "{:<26} {:<7} {:>5} {:>12} {:>10} {:>10} {:>9}",
        "model", "class", "files", "renders/s", "p50 µs", "p99 µs", "bytes"
    );
    for (brand, id) in MODELS {
        let model = effective_model(catalogue(), brand, None, id).expect("catalogue model");
        let model_ref = ModelRef {
            brand: &model.brand,
            family: Some(&model.family),
            model: &model.model,
            meta: model.meta(),
        };
        let files = by_brand(brand).expect("vendor").files(&model_ref, &mac);
        for class in [FileClass::Device, FileClass::Common] {
            let chosen: Vec<&FileSpec> = files.iter().filter(|f| f.class == class).collect();
            let context = match class {
                FileClass::Device => sample::device_context(&model, &mac),
                FileClass::Common => sample::common_context(&model),
            };
            let mut next = 0;
            let mut stats = measure(|| {
                let file = chosen[next % chosen.len()];
                next += 1;
                registry
                    .render(file.template, &context)
                    .expect("renders")
                    .len()
            });
            println!(
                "{:<26} {:<7} {:>5} {:>12.0} {:>10.1} {:>10.1} {:>9}",
                format!("{brand}/{id}"),
                format!("{class:?}").to_lowercase(),
                chosen.len(),
                stats.per_second(),
                stats.percentile(0.5).as_secs_f64() * 1e6,
                stats.percentile(0.99).as_secs_f64() * 1e6,
                stats.bytes / stats.count.max(1),
            );
        }
    }
    naming_and_grammars(&mac);
}

/// Naming all files of a unit, and resolving request names through every
/// vendor's grammar (what serving does before any lookup).
fn naming_and_grammars(mac: &Mac) {
    let model = effective_model(catalogue(), "yealink", None, "t46s").expect("t46s");
    let vendor = by_brand("yealink").expect("yealink");
    let model_ref = ModelRef {
        brand: &model.brand,
        family: Some(&model.family),
        model: &model.model,
        meta: model.meta(),
    };
    let mut naming = measure(|| vendor.files(&model_ref, mac).len());
    let names = [
        "805ec0123456.cfg",
        "0004f282e824-phone.cfg",
        "spa0002fdff2103.xml",
        "cfg000b828aa872.xml",
        "snomD785-000413922D24.htm",
        "y000000000066.cfg",
        "..%2f..%2fetc%2fpasswd",
    ];
    let mut next = 0;
    let mut grammar = measure(|| {
        next += 1;
        vendors_claiming(names[next % names.len()]).len()
    });
    println!(
        "files() of a unit: {:.0}/s (p99 {:.2} µs); a request name through every grammar: {:.0}/s (p99 {:.2} µs)",
        naming.per_second(),
        naming.percentile(0.99).as_secs_f64() * 1e6,
        grammar.per_second(),
        grammar.percentile(0.99).as_secs_f64() * 1e6,
    );
}

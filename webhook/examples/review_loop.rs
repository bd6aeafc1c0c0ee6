//! Answer one AdmissionReview body N times with the default policy, for profilers:
//! `valgrind --tool=callgrind target/release/examples/review_loop body.json 100`. With a third argument
//! `floor`, only decode the review and allow it (bench/src/bin/floor_webhook.rs's work).
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use tollgate_webhook::policy::Policy;

#[global_allocator]
static ALLOCATOR: tollgate_memory::Allocator = tollgate_memory::Allocator {};

fn main() {
    let mut args = std::env::args().skip(1);
    let body = std::fs::read(args.next().expect("a review body file")).expect("the body file is readable");
    let times: usize = args.next().map_or(1, |n| n.parse().expect("a count"));
    let floor = args.next().as_deref() == Some("floor");
    let policy = Policy::default();
    let mut total = 0;
    let started = std::time::Instant::now();
    for _ in 0..times {
        let answer = if floor {
            let review: AdmissionReview<DynamicObject> = serde_json::from_slice(&body).expect("a review");
            let request: AdmissionRequest<DynamicObject> = review.try_into().expect("a request");
            serde_json::to_vec(&AdmissionResponse::from(&request).into_review()).expect("encodes")
        } else {
            tollgate_webhook::review::review(&policy, &body).expect("a review").0
        };
        total += answer.len();
    }
    eprintln!("{:?} per review", started.elapsed() / times as u32);
    println!("{total}");
}

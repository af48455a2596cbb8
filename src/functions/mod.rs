//! kiln's feature functions, registered in every session: the transforms
//! feature engineering repeats (hashing, bucketing, scaling, MinHash,
//! vector arithmetic), each a DataFusion UDF over Arrow arrays.
//!
//! Each function checks its arguments while planning and runs its rows
//! through the loops of `kiln_kernels::cpu`, where every seeded or hashed
//! answer is defined bit for bit, so a user can reproduce it outside kiln
//! (`docs/functions.md` shows how, in Python).

mod args;
pub mod bucketize;
pub mod device;
pub mod hash_bucket;
mod lists;
pub mod minhash;
pub mod projection;
pub mod scale;
pub mod vector;

use datafusion::common::Result;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::{Expr, LogicalPlan, ScalarUDF, WindowUDF};
use datafusion::prelude::SessionContext;

use scale::{Scale, ScaleOver};
use vector::{Vector, VectorOp};

pub fn scalar_functions() -> Vec<ScalarUDF> {
    vec![
        ScalarUDF::new_from_impl(hash_bucket::HashBucket::default()),
        ScalarUDF::new_from_impl(bucketize::Bucketize::default()),
        ScalarUDF::new_from_impl(minhash::MinHash::default()),
        ScalarUDF::new_from_impl(minhash::MinHashJaccard::default()),
        ScalarUDF::new_from_impl(Vector::new(VectorOp::L2Normalize)),
        ScalarUDF::new_from_impl(Vector::new(VectorOp::Dot)),
        ScalarUDF::new_from_impl(Vector::new(VectorOp::Cosine)),
        ScalarUDF::new_from_impl(projection::RandomProjection::default()),
    ]
}

pub fn window_functions() -> Vec<WindowUDF> {
    [Scale::Standard, Scale::MinMax, Scale::QuantileBucket]
        .into_iter()
        .map(|s| WindowUDF::new_from_impl(ScaleOver::new(s)))
        .collect()
}

/// Adds every feature function to `ctx`.
pub fn register(ctx: &SessionContext) {
    for f in scalar_functions() {
        ctx.register_udf(f);
    }
    for f in window_functions() {
        ctx.register_udwf(f);
    }
}

/// The names `kiln check` can point at when a call is wrong.
pub fn names() -> Vec<String> {
    let scalars = scalar_functions().into_iter().map(|f| f.name().to_string());
    scalars
        .chain(window_functions().into_iter().map(|f| f.name().to_string()))
        .collect()
}

/// The functions with a CUDA kernel; the others always run on the CPU.
pub const ON_GPU: &[&str] = &[
    "hash_bucket",
    "bucketize",
    "minhash",
    "l2_normalize",
    "dot",
    "cosine_similarity",
    "random_projection",
];

/// kiln's functions that `plan` calls, each once, in name order.
pub fn used_in(plan: &LogicalPlan) -> Vec<String> {
    let ours = names();
    let mut used = std::collections::BTreeSet::new();
    let _ = plan.apply_with_subqueries(|node| {
        node.apply_expressions(|e| {
            e.apply(|e| {
                let name = match e {
                    Expr::ScalarFunction(f) => Some(f.name()),
                    Expr::WindowFunction(w) => Some(w.fun.name()),
                    _ => None,
                };
                if let Some(name) = name.filter(|n| ours.iter().any(|o| o == n)) {
                    used.insert(name.to_string());
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    });
    used.into_iter().collect()
}

/// Checks of a planned expression that types alone do not make.
pub fn check_call(expr: &Expr) -> Result<()> {
    scale::check_window_call(expr)
}

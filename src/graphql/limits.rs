//! One complexity budget for a whole batch.
//!
//! async-graphql checks depth and complexity per operation, and runs a
//! batch's operations one after the other, so a limit checked while the
//! batch runs would come after the first operations had run. Instead each
//! operation of a batch is first validated alone (parsed and checked, never
//! executed: [`ComplexityProbe`] stops it after validation and notes its
//! complexity), and the batch runs only when the sum is within
//! `graphql.max_complexity`.
//!
//! Rule: a dry run never reaches a resolver; the probe ends it in the
//! validation hook, before execution starts.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextValidation};
use async_graphql::{Request, ServerError, ValidationResult};

use super::ApiSchema;

/// The schema extension that ends dry runs (installed by `graphql::build`).
pub struct ComplexityProbe;

impl ExtensionFactory for ComplexityProbe {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(Probe)
    }
}

struct Probe;

/// Request data marking a dry run; receives the operation's complexity.
#[derive(Clone, Default)]
struct DryRun(Arc<AtomicUsize>);

#[async_trait::async_trait]
impl Extension for Probe {
    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        let result = next.run(ctx).await?;
        match ctx.data_opt::<DryRun>() {
            Some(dry_run) => {
                dry_run.0.store(result.complexity, Ordering::Relaxed);
                Err(vec![ServerError::new("dry run: validated, not executed", None)])
            }
            None => Ok(result),
        }
    }
}

/// The summed complexity of `requests`, none of them executed. An
/// operation that does not validate counts 0 here: it fails with its own
/// error when the batch runs.
pub async fn batch_complexity(schema: &ApiSchema, requests: &[Request]) -> usize {
    let mut total: usize = 0;
    for request in requests {
        let mut probe = Request::new(request.query.clone()).variables(request.variables.clone());
        probe.operation_name = request.operation_name.clone();
        let dry_run = DryRun::default();
        let probe = probe.data(dry_run.clone());
        let _ = schema.execute(probe).await;
        total = total.saturating_add(dry_run.0.load(Ordering::Relaxed));
    }
    total
}

//! Object stores for source locations. Credentials and endpoints come from
//! the standard environment variables (`AWS_*`, `GOOGLE_*`), as every other
//! tool on the same cluster reads them.

use std::sync::Arc;

use datafusion::error::{DataFusionError, Result};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::prelude::SessionContext;
use object_store::aws::AmazonS3Builder;
use object_store::gcp::GoogleCloudStorageBuilder;

/// Make sure the session can reach `location`'s bucket. Local paths need
/// nothing: DataFusion knows the local file system.
pub fn register_store_for(ctx: &SessionContext, location: &str) -> Result<()> {
    let Some((scheme, rest)) = location.split_once("://") else {
        return Ok(());
    };
    let bucket = rest.split('/').next().unwrap_or_default();
    if bucket.is_empty() && scheme != "file" {
        return Err(DataFusionError::Plan(format!("'{location}' names no bucket")));
    }
    let store: Arc<dyn object_store::ObjectStore> = match scheme {
        "file" => return Ok(()),
        "s3" => Arc::new(
            AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .build()
                .map_err(|e| DataFusionError::External(Box::new(e)))?,
        ),
        "gs" => Arc::new(
            GoogleCloudStorageBuilder::from_env()
                .with_bucket_name(bucket)
                .build()
                .map_err(|e| DataFusionError::External(Box::new(e)))?,
        ),
        other => {
            return Err(DataFusionError::Plan(format!(
                "unsupported URL scheme '{other}://' in '{location}'"
            )));
        }
    };
    let url = ObjectStoreUrl::parse(format!("{scheme}://{bucket}"))?;
    ctx.register_object_store(url.as_ref(), store);
    Ok(())
}

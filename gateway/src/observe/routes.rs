//! What the routes' shared policy state says, for `/metrics`: faults in progress now
//! (`max_active_faults` counts them), read at scrape time from the snapshot.

use std::fmt::Write as _;

use super::metrics::escape_label_value;
use weft_mesh::snapshot::Snapshot;

/// Every route-policy series, in Prometheus' text format.
pub fn metrics(snapshot: &Snapshot) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "# HELP weft_route_fault_active Faults a route is injecting now (a delay in progress), by listener and route.\n\
         # TYPE weft_route_fault_active gauge\n"
    );
    for listener in snapshot.listeners.iter() {
        for route in &listener.routes.routes {
            if let Some(fault) = &route.fault {
                let (mut l, mut r) = (String::new(), String::new());
                escape_label_value(&listener.name, &mut l);
                escape_label_value(&route.name, &mut r);
                let _ = writeln!(
                    out,
                    "weft_route_fault_active{{listener=\"{l}\",route=\"{r}\"}} {}",
                    fault.active.get()
                );
            }
        }
    }
    out
}

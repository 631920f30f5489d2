//! Declaring a service's metrics in one place.
//!
//! [`meters!`](crate::meters) turns a list of documented names into constants and a `register`
//! function that gives each metric its Prometheus help text and exports it from the start (at
//! zero), so dashboards and alerts find every series before the first event.

#[doc(hidden)]
pub use metrics as __metrics;

/// Declares metric names: `counter NAME = "service_name_total";`, `gauge ...`, `histogram ...`,
/// each with a doc comment that also becomes its help text.
#[macro_export]
macro_rules! meters {
    ($( $(#[doc = $doc:literal])* $kind:ident $name:ident = $metric:literal
        $([ $($label:ident = $value:literal),* ])? ; )*) => {
        $( $(#[doc = $doc])* pub const $name: &str = $metric; )*

        /// Describes every metric and exports it at zero, before the first event: with the
        /// label set given beside it (a labelled metric exported without labels would add an
        /// empty series to every `by (...)` panel), or none for `[]`, whose labels are known
        /// only at run time (the service registers it itself).
        pub fn register() {
            // Install the recorder first, or the registrations would go nowhere.
            let _ = $crate::telemetry::metrics_handle();
            $( $crate::meters!(@register $kind, $metric, concat!($($doc),*).trim(),
                $([ $($label = $value),* ])?); )*
        }

        /// Every metric name declared here.
        pub const ALL: &[&str] = &[$($metric),*];

        /// Every metric name, and whether it is labelled (declared with a label set).
        pub const LABELLED: &[(&str, bool)] =
            &[$(($metric, $crate::meters!(@labelled $([ $($label),* ])?))),*];
    };
    (@labelled [$($label:ident),*]) => { true };
    (@labelled) => { false };
    (@register $kind:ident, $metric:literal, $help:expr, []) => {
        $crate::meters!(@describe $kind, $metric, $help);
    };
    (@register counter, $metric:literal, $help:expr, $([ $($label:ident = $value:literal),+ ])?) => {
        $crate::meters!(@describe counter, $metric, $help);
        $crate::meters::__metrics::counter!($metric $($(, stringify!($label) => $value)+)?).increment(0);
    };
    (@register gauge, $metric:literal, $help:expr, $([ $($label:ident = $value:literal),+ ])?) => {
        $crate::meters!(@describe gauge, $metric, $help);
        $crate::meters::__metrics::gauge!($metric $($(, stringify!($label) => $value)+)?).increment(0.0);
    };
    (@register histogram, $metric:literal, $help:expr, $([ $($label:ident = $value:literal),+ ])?) => {
        $crate::meters!(@describe histogram, $metric, $help);
        let _ = $crate::meters::__metrics::histogram!($metric $($(, stringify!($label) => $value)+)?);
    };
    (@describe counter, $metric:literal, $help:expr) => {
        $crate::meters::__metrics::describe_counter!($metric, $help);
    };
    (@describe gauge, $metric:literal, $help:expr) => {
        $crate::meters::__metrics::describe_gauge!($metric, $help);
    };
    (@describe histogram, $metric:literal, $help:expr) => {
        $crate::meters::__metrics::describe_histogram!($metric, $help);
    };
}

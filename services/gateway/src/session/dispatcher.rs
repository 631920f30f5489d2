//! A dispatcher's part of a session: the trip feed, and the viewport's vehicles cell by cell
//! (zoomed in) or per-cell counts region by region (zoomed out).

use std::task::Poll;

use futures_util::StreamExt;
use futures_util::stream::SelectAll;
use protocol::bus::{CellCounts, Position, TripEvent};
use protocol::client::{self, CellAggregate, ServerMessage, VehicleView};
use protocol::{ErrorCode, codec};

use super::{Session, ack_text, error_text};
use crate::outbound::Key;
use crate::viewport;

/// The NATS subscriptions feeding one session.
#[derive(Default)]
pub(super) struct Feeds {
    /// This client's messages, routed by [`crate::inbox`].
    pub inbox: Option<crate::inbox::Registration>,
    /// A dispatcher's feeds. Boxed, and `None` for drivers and riders: they are most sessions,
    /// and these would cost each some 400 bytes (an empty `SelectAll` already allocates).
    pub view: Option<Box<ViewFeeds>>,
}

/// A dispatcher's feeds: every trip's events, and the viewport's vehicles cell by cell or
/// counts region by region.
#[derive(Default)]
pub(super) struct ViewFeeds {
    pub trips: Option<async_nats::Subscriber>,
    cells: SelectAll<async_nats::Subscriber>,
    aggregates: SelectAll<async_nats::Subscriber>,
}

/// A message from one of a dispatcher's feeds.
pub(super) enum ViewMessage {
    Trip(async_nats::Message),
    Vehicle(async_nats::Message),
    Counts(async_nats::Message),
}

/// The next message from a dispatcher's feeds; never, for a session without them. One select
/// branch for all three, so that every other session's select holds one future fewer.
pub(super) async fn next_view(view: &mut Option<Box<ViewFeeds>>) -> ViewMessage {
    let Some(view) = view else {
        return std::future::pending().await;
    };
    std::future::poll_fn(|cx| {
        if let Some(trips) = &mut view.trips {
            match trips.poll_next_unpin(cx) {
                Poll::Ready(Some(message)) => return Poll::Ready(ViewMessage::Trip(message)),
                // Ended (the NATS client closed it): opened again on the next resync.
                Poll::Ready(None) => view.trips = None,
                Poll::Pending => {}
            }
        }
        // An empty `SelectAll` is ready with `None`: nothing to wait for until a viewport adds
        // subscriptions, which happens in the session's own loop.
        if let Poll::Ready(Some(message)) = view.cells.poll_next_unpin(cx) {
            return Poll::Ready(ViewMessage::Vehicle(message));
        }
        if let Poll::Ready(Some(message)) = view.aggregates.poll_next_unpin(cx) {
            return Poll::Ready(ViewMessage::Counts(message));
        }
        Poll::Pending
    })
    .await
}

impl Session {
    /// Queues what a dispatcher's feed delivered: latest per trip, per vehicle, per region.
    pub(super) fn on_view(&self, message: ViewMessage) {
        match message {
            ViewMessage::Trip(message) => {
                if let Ok(event) = codec::decode::<TripEvent>(&message.payload) {
                    let key = Key::Trip(event.trip.trip_id);
                    let update = ServerMessage::TripUpdate { trip: event.trip };
                    self.out.latest(key, update.to_json());
                }
            }
            ViewMessage::Vehicle(message) => {
                if let Ok(p) = codec::decode::<Position>(&message.payload) {
                    self.out.vehicle(VehicleView {
                        driver_id: p.driver_id,
                        lat: p.lat,
                        lng: p.lng,
                        heading: p.heading,
                        status: p.status,
                        ts: p.ts,
                    });
                }
            }
            ViewMessage::Counts(message) => {
                if let Ok(counts) = codec::decode::<CellCounts>(&message.payload) {
                    let cells = counts
                        .cells
                        .iter()
                        .map(|c| CellAggregate {
                            cell: format!("{:x}", c.cell),
                            vehicles: c.vehicles,
                            available: c.available,
                            open_requests: c.open_requests,
                        })
                        .collect();
                    let aggregates = ServerMessage::CellAggregates {
                        resolution: counts.resolution,
                        cells,
                    };
                    self.out
                        .latest(Key::Aggregates(counts.region), aggregates.to_json());
                }
            }
        }
    }

    /// Replaces the dispatcher's viewport: the cells' vehicles when zoomed in at least to the
    /// detail zoom, otherwise the regions' per-cell counts.
    pub(super) async fn viewport(
        &self,
        id: u64,
        viewport: client::Viewport,
        zoom: f32,
        feeds: &mut Feeds,
    ) {
        let config = &self.shared.config;
        let nats = &self.shared.nats;
        let view = feeds.view.get_or_insert_with(Box::default);
        view.cells = SelectAll::new();
        view.aggregates = SelectAll::new();
        let detailed = if zoom >= config.limits.detail_zoom {
            viewport::cells(
                &viewport,
                config.geo.cell_res,
                config.limits.max_viewport_cells,
            )
        } else {
            None
        };
        match detailed {
            Some(cells) => {
                for cell in cells {
                    let subject = self
                        .subjects()
                        .location(config.geo.region_of_cell(cell), cell);
                    if let Ok(sub) = nats.subscribe(subject).await {
                        view.cells.push(sub);
                    }
                }
            }
            None => {
                let Some(regions) = viewport::cells(
                    &viewport,
                    config.geo.region_res,
                    config.limits.max_viewport_regions,
                ) else {
                    self.out.control(error_text(
                        Some(id),
                        ErrorCode::InvalidField,
                        "viewport too large; zoom in",
                    ));
                    return;
                };
                for region in regions {
                    if let Ok(sub) = nats.subscribe(self.subjects().cell_counts(region)).await {
                        view.aggregates.push(sub);
                    }
                }
            }
        }
        self.out.control(ack_text(id));
    }
}

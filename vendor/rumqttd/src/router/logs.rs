use super::Ack;
use slab::Slab;
use tracing::{info, trace};

use crate::protocol::{
    matches, ConnAck, ConnAckProperties, PingResp, PubAck, PubComp, PubRec, PubRel, Publish,
    PublishProperties, SubAck, UnsubAck,
};
use crate::router::{DataRequest, FilterIdx, SubscriptionMeter, Waiters};
use crate::{ConnectionId, Filter, Offset, RouterConfig, Topic};

use crate::segments::{CommitLog, Position};
use crate::Storage;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::time::Instant;

type PubWithProp = (Publish, Option<PublishProperties>);

#[derive(Clone)]
pub struct PublishData {
    pub publish: Publish,
    pub properties: Option<PublishProperties>,
    pub timestamp: Instant,
}

impl From<PubWithProp> for PublishData {
    fn from((publish, properties): PubWithProp) -> Self {
        PublishData {
            publish,
            properties,
            timestamp: Instant::now(),
        }
    }
}

// TODO: remove this from here
impl Storage for PublishData {
    // TODO: calculate size of publish properties as well!
    fn size(&self) -> usize {
        let publish = &self.publish;
        4 + publish.topic.len() + publish.payload.len()
    }
}

/// Stores 'device' data and 'actions' data in native commitlog
/// organized by subscription filter. Device data is replicated
/// while actions data is not
pub struct DataLog {
    pub config: RouterConfig,
    /// Native commitlog data organized by subscription. Contains
    /// device data and actions data logs.
    ///
    /// Device data is replicated while actions data is not.
    /// Also has waiters used to wake connections/replicator tracker
    /// which are caught up with all the data on 'Filter' and waiting
    /// for new data
    pub native: Slab<Data<PublishData>>,
    /// Map of subscription filter name to filter index
    filter_indexes: HashMap<Filter, FilterIdx>,
    /// Rakkr patch: filters by their literal prefix (see [`literal_prefix`]),
    /// so a new topic is matched against the few filters that can match it,
    /// not every filter. Topics below are ordered for the same reason: a new
    /// filter (or a subscription's retained lookup) visits only the topics
    /// under its literal prefix. Upstream scanned everything both ways, which
    /// made connecting N clients that each subscribe to their own filter and
    /// publish to their own topics O(N²). See /vendor/README.md.
    filters_by_prefix: HashMap<String, Vec<(Filter, FilterIdx)>>,
    retained_publishes: BTreeMap<Topic, PublishData>,
    /// List of filters associated with a topic
    publish_filters: BTreeMap<Topic, Vec<FilterIdx>>,
}

/// Rakkr patch: the levels of `filter` before its first wildcard, each
/// followed by `/` (`a/b/#` → `a/b/`, `a/b` → `a/b/`, `#` → ``). A topic can
/// match the filter only if its own levels begin with these.
fn literal_prefix(filter: &str) -> String {
    let mut prefix = String::with_capacity(filter.len() + 1);
    for level in filter.split('/') {
        if level == "+" || level == "#" {
            break;
        }
        prefix.push_str(level);
        prefix.push('/');
    }
    prefix
}

/// Rakkr patch: the part of an ordered topic map a filter with literal
/// prefix `prefix` can match (a superset: callers still call `matches`).
fn topics_under<'a, V>(
    map: &'a mut BTreeMap<Topic, V>,
    prefix: &str,
) -> impl Iterator<Item = (&'a Topic, &'a mut V)> {
    // `a/b/` covers the topic `a/b` itself (for `a/b/#`) and everything below.
    let start = prefix.strip_suffix('/').unwrap_or(prefix).to_owned();
    map.range_mut::<str, _>((
        std::ops::Bound::Included(start.as_str()),
        std::ops::Bound::Unbounded,
    ))
    .take_while(move |(topic, _)| topic.starts_with(start.as_str()))
}

impl DataLog {
    pub fn new(config: RouterConfig) -> io::Result<DataLog> {
        let mut native = Slab::new();
        let mut filter_indexes = HashMap::new();
        let mut filters_by_prefix: HashMap<String, Vec<(Filter, FilterIdx)>> = HashMap::new();
        let retained_publishes = BTreeMap::new();
        let publish_filters = BTreeMap::new();

        if let Some(warmup_filters) = config.initialized_filters.clone() {
            for filter in warmup_filters {
                let data = Data::new(&filter, &config);

                // Add commitlog to datalog and add datalog index to filter to
                // datalog index map
                let idx = native.insert(data);
                filters_by_prefix
                    .entry(literal_prefix(&filter))
                    .or_default()
                    .push((filter.clone(), idx));
                filter_indexes.insert(filter, idx);
            }
        }

        Ok(DataLog {
            config,
            native,
            publish_filters,
            filter_indexes,
            filters_by_prefix,
            retained_publishes,
        })
    }

    pub fn meter(&mut self, filter: &str) -> Option<&mut SubscriptionMeter> {
        let data = self.native.get_mut(*self.filter_indexes.get(filter)?)?;
        Some(&mut data.meter)
    }

    pub fn waiters(&self, filter: &Filter) -> Option<&Waiters<DataRequest>> {
        self.native
            .get(*self.filter_indexes.get(filter)?)
            .map(|data| &data.waiters)
    }

    pub fn remove_waiters_for_id(
        &mut self,
        id: ConnectionId,
        filter: &Filter,
    ) -> Option<DataRequest> {
        let data = self
            .native
            .get_mut(*self.filter_indexes.get(filter)?)
            .unwrap();
        let waiters = data.waiters.get_mut();

        waiters
            .iter()
            .position(|&(conn_id, _)| conn_id == id)
            .and_then(|index| {
                waiters
                    .swap_remove_back(index)
                    .map(|(_, data_req)| data_req)
            })
    }

    // TODO: Currently returning a Option<Vec> instead of Option<&Vec> due to Rust borrow checker
    // limitation
    pub fn matches(&mut self, topic: &str) -> Option<Vec<usize>> {
        match &self.publish_filters.get(topic) {
            Some(v) => Some(v.to_vec()),
            None => {
                // Rakkr patch: only filters whose literal prefix is one of the
                // topic's own level prefixes (each filter sits under one key).
                let mut v: Vec<usize> = Vec::new();
                let mut prefix = String::with_capacity(topic.len() + 1);
                let mut visit = |prefix: &str| {
                    if let Some(filters) = self.filters_by_prefix.get(prefix) {
                        for (filter, filter_idx) in filters {
                            if matches(topic, filter) {
                                v.push(*filter_idx);
                            }
                        }
                    }
                };
                visit("");
                for level in topic.split('/') {
                    prefix.push_str(level);
                    prefix.push('/');
                    visit(&prefix);
                }

                if !v.is_empty() {
                    self.publish_filters.insert(topic.to_owned(), v.clone());
                }

                Some(v)
            }
        }
    }

    pub fn next_native_offset(&mut self, filter: &str) -> (FilterIdx, Offset) {
        let publish_filters = &mut self.publish_filters;
        let filter_indexes = &mut self.filter_indexes;

        let (filter_idx, data) = match filter_indexes.get(filter) {
            Some(idx) => (*idx, self.native.get(*idx).unwrap()),
            None => {
                let data = Data::new(filter, &self.config);

                // Add commitlog to datalog and add datalog index to filter to
                // datalog index map
                let idx = self.native.insert(data);
                self.filter_indexes.insert(filter.to_owned(), idx);
                let prefix = literal_prefix(filter);

                // Match new filter to existing topics and add to publish_filters if it matches
                // (Rakkr patch: only the topics under its literal prefix)
                for (topic, filters) in topics_under(publish_filters, &prefix) {
                    if matches(topic, filter) {
                        filters.push(idx);
                    }
                }

                self.filters_by_prefix
                    .entry(prefix)
                    .or_default()
                    .push((filter.to_owned(), idx));
                (idx, self.native.get(idx).unwrap())
            }
        };

        (filter_idx, data.log.next_offset())
    }

    pub fn native_readv(
        &self,
        filter_idx: FilterIdx,
        offset: Offset,
        len: u64,
    ) -> io::Result<(Position, Vec<(PubWithProp, Offset)>)> {
        // unwrap to get index of `self.native` is fine here, because when a new subscribe packet
        // arrives in `Router::handle_device_payload`, it first calls the function
        // `next_native_offset` which creates a new commitlog if one doesn't exist. So any new
        // reads will definitely happen on a valid filter.
        let data = self.native.get(filter_idx).unwrap();
        let mut o = Vec::new();
        // TODO: `readv` is infallible but its current return type does not
        // reflect that. Consequently, this method is also infallible.
        // Encoding this information is important so that calling function
        // has more information on how this method behaves.
        let next = data.log.readv(offset, len, &mut o)?;

        let now = Instant::now();
        o.retain_mut(|(pubdata, _)| {
            // Keep data if no properties exists, which implies no message expiry!
            let Some(properties) = pubdata.properties.as_mut() else {
                return true;
            };

            // Keep data if there is no message_expiry_interval
            let Some(message_expiry_interval) = properties.message_expiry_interval.as_mut() else {
                return true;
            };

            let time_spent = (now - pubdata.timestamp).as_secs() as u32;

            let is_valid = time_spent < *message_expiry_interval;

            // ignore expired messages
            if is_valid {
                // set message_expiry_interval to (original value - time spent waiting in server)
                // ref: https://docs.oasis-open.org/mqtt/mqtt/v5.0/os/mqtt-v5.0-os.html#_Toc3901112
                *message_expiry_interval -= time_spent;
            }

            is_valid
        });

        // no need to include timestamp when returning
        let o = o
            .into_iter()
            .map(|(pubdata, offset)| ((pubdata.publish, pubdata.properties), offset))
            .collect();

        Ok((next, o))
    }

    pub fn shadow(&mut self, filter: &str) -> Option<PubWithProp> {
        let data = self.native.get_mut(*self.filter_indexes.get(filter)?)?;
        data.log.last().map(|p| (p.publish, p.properties))
    }

    /// This method is called when the subscriber has caught up with the commit log. In which case,
    /// instead of actively checking for commits in each `Router::run_inner` iteration, we instead
    /// wait and only try reading again when new messages have been added to the commit log. This
    /// methods converts a `DataRequest` (which actively reads the commit log in `Router::consume`)
    /// to a `Waiter` (which only reads when notified).
    pub fn park(&mut self, id: ConnectionId, request: DataRequest) {
        // calling unwrap on index here is fine, because only place this function is called is in
        // `Router::consume` method, when the status after reading from commit log of the same
        // filter as `request` is "done", that is, the subscriber has caught up. In other words,
        // there has been atleast 1 call to `native_readv` for the same filter, which means if
        // `native_readv` hasn't paniced, so this won't panic either.
        let data = self.native.get_mut(request.filter_idx).unwrap();
        data.waiters.register(id, request);
    }

    /// Cleanup a connection from all the waiters
    pub fn clean(&mut self, id: ConnectionId) -> Vec<DataRequest> {
        let mut inflight = Vec::new();
        for (_, data) in self.native.iter_mut() {
            inflight.append(&mut data.waiters.remove(id));
        }

        inflight
    }

    pub fn insert_to_retained_publishes(
        &mut self,
        publish: Publish,
        publish_properties: Option<PublishProperties>,
        topic: Topic,
    ) {
        let pub_with_props = (publish, publish_properties);
        self.retained_publishes.insert(topic, pub_with_props.into());
    }

    pub fn remove_from_retained_publishes(&mut self, topic: Topic) {
        self.retained_publishes.remove(&topic);
    }

    pub fn read_retained_messages(&mut self, filter: &str) -> Vec<PubWithProp> {
        trace!(info = "reading retain msg", filter = &filter);
        let now = Instant::now();

        // discard expired retained messages
        // (Rakkr patch: among those under the filter's literal prefix; the
        // others are pruned when a filter over them reads)
        let prefix = literal_prefix(filter);
        let mut expired = Vec::new();
        for (topic, pubdata) in topics_under(&mut self.retained_publishes, &prefix) {
            if !retained_is_live(pubdata, now) {
                expired.push(topic.clone());
            }
        }
        for topic in expired {
            self.retained_publishes.remove(&topic);
        }

        // no need to include timestamp when returning
        topics_under(&mut self.retained_publishes, &prefix)
            .filter(|(topic, _)| matches(topic, filter))
            .map(|(_, p)| (p.publish.clone(), p.properties.clone()))
            .collect()
    }
}

/// Whether a retained message is still live at `now`; counts its
/// message-expiry interval down by the time it has waited (MQTT 5).
fn retained_is_live(pubdata: &mut PublishData, now: Instant) -> bool {
    // Keep data if no properties exists, which implies no message expiry!
    let Some(properties) = pubdata.properties.as_mut() else {
        return true;
    };

    // Keep data if there is no message_expiry_interval
    let Some(message_expiry_interval) = properties.message_expiry_interval.as_mut() else {
        return true;
    };

    let time_spent = (now - pubdata.timestamp).as_secs() as u32;

    let is_valid = time_spent < *message_expiry_interval;

    // ignore expired messages
    if is_valid {
        // set message_expiry_interval to (original value - time spent waiting in server)
        // ref: https://docs.oasis-open.org/mqtt/mqtt/v5.0/os/mqtt-v5.0-os.html#_Toc3901112
        *message_expiry_interval -= time_spent;
    }

    is_valid
}

pub struct Data<T> {
    filter: Filter,
    pub log: CommitLog<T>,
    pub waiters: Waiters<DataRequest>,
    meter: SubscriptionMeter,
}

impl<T> Data<T>
where
    T: Storage + Clone,
{
    pub fn new(filter: &str, router_config: &RouterConfig) -> Data<T> {
        let mut max_segment_size = router_config.max_segment_size;
        let mut max_mem_segments = router_config.max_segment_count;

        // Override segment config for selected filter
        if let Some(config) = &router_config.custom_segment {
            for (f, segment_config) in config {
                if matches(filter, f) {
                    info!("Overriding segment config for filter: {}", filter);
                    max_segment_size = segment_config.max_segment_size;
                    max_mem_segments = segment_config.max_segment_count;
                }
            }
        }

        // max_segment_size: usize, max_mem_segments: usize
        let log = CommitLog::new(max_segment_size, max_mem_segments).unwrap();

        let waiters = Waiters::with_capacity(10);
        let metrics = SubscriptionMeter::default();
        Data {
            filter: filter.to_owned(),
            log,
            waiters,
            meter: metrics,
        }
    }

    /// Writes to all the filters that are mapped to this publish topic
    /// and wakes up consumers that are matching this topic (if they exist)
    pub fn append(
        &mut self,
        item: T,
        notifications: &mut VecDeque<(ConnectionId, DataRequest)>,
    ) -> (Offset, &Filter) {
        let size = item.size();
        let offset = self.log.append(item);
        if let Some(mut parked) = self.waiters.take() {
            notifications.append(&mut parked);
        }

        self.meter.count += 1;
        self.meter.total_size += size;

        (offset, &self.filter)
    }
}

/// Acks log for a subscription
#[derive(Debug)]
pub struct AckLog {
    // Committed acks per connection. First pkid, last pkid, data
    committed: VecDeque<Ack>,
    // Recorded qos 2 publishes
    recorded: VecDeque<(Publish, Option<PublishProperties>)>,
}

impl AckLog {
    /// New log
    pub fn new() -> AckLog {
        AckLog {
            committed: VecDeque::with_capacity(100),
            recorded: VecDeque::with_capacity(100),
        }
    }

    pub fn connack(&mut self, id: ConnectionId, ack: ConnAck, props: Option<ConnAckProperties>) {
        let ack = Ack::ConnAck(id, ack, props);
        self.committed.push_back(ack);
    }

    pub fn suback(&mut self, ack: SubAck) {
        let ack = Ack::SubAck(ack);
        self.committed.push_back(ack);
    }

    pub fn puback(&mut self, ack: PubAck) {
        let ack = Ack::PubAck(ack);
        self.committed.push_back(ack);
    }

    pub fn pubrec(&mut self, publish: Publish, props: Option<PublishProperties>, ack: PubRec) {
        let ack = Ack::PubRec(ack);
        self.recorded.push_back((publish, props));
        self.committed.push_back(ack);
    }

    pub fn pubrel(&mut self, ack: PubRel) {
        let ack = Ack::PubRel(ack);
        self.committed.push_back(ack);
    }

    pub fn pubcomp(&mut self, ack: PubComp) -> Option<(Publish, Option<PublishProperties>)> {
        let ack = Ack::PubComp(ack);
        self.committed.push_back(ack);
        self.recorded.pop_front()
    }

    pub fn pingresp(&mut self, ack: PingResp) {
        let ack = Ack::PingResp(ack);
        self.committed.push_back(ack);
    }

    pub fn unsuback(&mut self, ack: UnsubAck) {
        let ack = Ack::UnsubAck(ack);
        self.committed.push_back(ack);
    }

    pub fn readv(&mut self) -> &mut VecDeque<Ack> {
        &mut self.committed
    }
}

#[cfg(test)]
mod test {
    use super::DataLog;
    use crate::router::shared_subs::Strategy;
    use crate::RouterConfig;

    #[test]
    fn publish_filters_updating_correctly_on_new_topic_subscription() {
        let config = RouterConfig {
            max_segment_size: 1024,
            max_connections: 10,
            max_segment_count: 10,
            max_outgoing_packet_count: 1024,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Strategy::RoundRobin,
        };
        let mut data = DataLog::new(config).unwrap();
        data.next_native_offset("topic/a");
        data.matches("topic/a");

        data.next_native_offset("topic/+");

        assert_eq!(data.publish_filters.get("topic/a").unwrap().len(), 2);
    }

    #[test]
    fn publish_filters_updating_correctly_on_new_publish() {
        let config = RouterConfig {
            max_segment_size: 1024,
            max_connections: 10,
            max_segment_count: 10,
            max_outgoing_packet_count: 1024,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Strategy::RoundRobin,
        };
        let mut data = DataLog::new(config).unwrap();
        data.next_native_offset("+/+");

        data.matches("topic/a");

        assert_eq!(data.publish_filters.get("topic/a").unwrap().len(), 1);
    }

    /// Rakkr patch: the prefix indexes find exactly what scanning everything
    /// found, whichever comes first, filters or topics, for the edge cases of
    /// MQTT matching (`#` over its parent level, empty levels, `$` topics).
    #[test]
    fn indexed_matching_equals_scanning_everything() {
        use crate::protocol::{matches, Publish};
        let filters = [
            "#", "+", "+/#", "/+", "/#", "a", "a/#", "a/+", "a/b", "a/b/#", "a/+/c", "a/b/c",
            "a/b/c/#", "+/b/+", "a//b", "a/+/+/d", "$SYS/#", "$SYS/+", "ab/#", "a/bc",
        ];
        let topics = [
            "a",
            "a/",
            "/",
            "/a",
            "a/b",
            "a/bc",
            "ab",
            "ab/c",
            "a/b/c",
            "a/b/c/d",
            "a/x/c",
            "a//b",
            "b/b/b",
            "$SYS/load",
            "$SYS",
            "x/y/z/w",
            "",
            "a/b/c/",
        ];
        let config = || RouterConfig {
            max_segment_size: 1024,
            max_connections: 10,
            max_segment_count: 10,
            max_outgoing_packet_count: 1024,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Strategy::RoundRobin,
        };
        // How many filters exist before the topics arrive: none, half (the
        // topics' cached matches must then grow as the rest arrive), all.
        for filters_first in [0, filters.len() / 2, filters.len()] {
            let mut data = DataLog::new(config()).unwrap();
            let mut idx = std::collections::HashMap::new();
            let add_filters = |data: &mut DataLog,
                               idx: &mut std::collections::HashMap<_, _>,
                               some: &[&'static str]| {
                for f in some {
                    idx.insert(data.next_native_offset(f).0, *f);
                }
            };
            add_filters(&mut data, &mut idx, &filters[..filters_first]);
            for t in topics {
                data.matches(t);
                let publish = Publish::new(t.as_bytes().to_vec(), vec![1], true);
                data.insert_to_retained_publishes(publish, None, t.to_owned());
            }
            add_filters(&mut data, &mut idx, &filters[filters_first..]);
            for t in topics {
                let mut got: Vec<&str> = data.matches(t).unwrap().iter().map(|i| idx[i]).collect();
                got.sort();
                let mut want: Vec<&str> = filters.into_iter().filter(|f| matches(t, f)).collect();
                want.sort();
                assert_eq!(got, want, "topic {t:?}, filters first: {filters_first}");
            }
            for f in filters {
                let mut got: Vec<String> = data
                    .read_retained_messages(f)
                    .into_iter()
                    .map(|(p, _)| String::from_utf8(p.topic.to_vec()).unwrap())
                    .collect();
                got.sort();
                let mut want: Vec<String> = topics
                    .into_iter()
                    .filter(|t| matches(t, f))
                    .map(str::to_owned)
                    .collect();
                want.sort();
                assert_eq!(got, want, "retained for filter {f:?}");
            }
        }
    }

    //     #[test]
    //     fn appends_are_written_to_correct_commitlog() {
    //         pretty_env_logger::init();
    //         let config = RouterConfig {
    //             instant_ack: true,
    //             max_segment_size: 1024,
    //             max_connections: 10,
    //             max_mem_segments: 10,
    //             max_disk_segments: 0,
    //             max_read_len: 1024,
    //             log_dir: None,
    //             dynamic_log: true,
    //         };

    //         let mut data = DataLog::new(config).unwrap();
    //         data.next_native_offset("/devices/2321/actions");
    //         for i in 0..2 {
    //             let publish = Publish::new("/devices/2321/events/imu/jsonarray", QoS::AtLeastOnce, vec![1, 2, 3]);
    //             let v = data.native_append(publish);
    //             dbg!(v);
    //         }

    //         for i in 0..2 {
    //             let publish = Publish::new("/devices/2321/actions", QoS::AtLeastOnce, vec![1, 2, 3]);
    //             let v = data.native_append(publish);
    //             dbg!(v);
    //         }
    //     }
}

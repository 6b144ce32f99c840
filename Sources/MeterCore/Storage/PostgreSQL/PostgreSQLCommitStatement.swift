import Foundation
import NIOCore
import PostgresNIO

/// One ingest commit on PostgreSQL: the batch's readings, flags, quarantined lines and aggregates
/// as arrays, handed to `meterd_commit_batch` in one call.
///
/// One statement is one implicit transaction: the function's INSERTs and UPDATEs commit together,
/// or an error rolls all of them back. With the trivial query that proves the commit
/// (``PostgreSQLIngestBackend/runCommitted(_:_:)``) that is two round trips. Arrays unnested
/// server-side cost one bind per column rather than per row; COPY into a staging table would need
/// a BEGIN, the COPY, the merge and a COMMIT: four round trips. PostgresNIO's arrays carry
/// no NULL elements, so a nullable column travels with a sentinel the function turns back into
/// NULL: ``nullInteger``, NaN for doubles (readings' numbers are finite), and the empty string for
/// texts that are never empty when present (fault codes, certificate identities).
///
/// The rows of the batch's meters with readings are updated only where `hwm_seq` still holds the
/// value the writer's cache had: when another node moved a meter's high-water mark in between, the
/// function raises SQLSTATE 40001 and the whole batch rolls back, so nothing is stored twice. A
/// meter with only duplicates in the batch is updated whatever its mark (``functionDefinitionV8``).
struct PostgreSQLCommitStatement {
    /// Stands for NULL in a `bigint[]`.
    static let nullInteger = Int64.min

    struct Readings {
        var meterIDs: [Int64] = []
        var timestamps: [Int64] = []
        var seqs: [Int64] = []
        var positions: [Int64] = []
        var received: [Int64] = []
        var kwh: [Double] = []
        var statuses: [Int64] = []
        var faults: [String] = []
        var voltages: [Double] = []
        var registers: [Double] = []
        var spanStarts: [Int64] = []

        mutating func append(meterID: Int64, _ reading: Reading, position: Int64, receivedMs: Int64, spanStartMs: Int64?) {
            self.meterIDs.append(meterID)
            self.timestamps.append(reading.timestampMs)
            self.seqs.append(reading.seq)
            self.positions.append(position)
            self.received.append(receivedMs)
            self.kwh.append(reading.kwh)
            self.statuses.append(Int64(reading.status.rawValue))
            self.faults.append(reading.fault ?? "")
            self.voltages.append(reading.voltage ?? .nan)
            self.registers.append(reading.registerKwh ?? .nan)
            self.spanStarts.append(spanStartMs ?? PostgreSQLCommitStatement.nullInteger)
        }

        /// The readings in (meter, seq) order, as they are inserted. A reading another node's open
        /// transaction inserted too makes the insert wait for that transaction; two nodes storing
        /// the same meters' readings in their arrival orders could wait for each other in a
        /// circle, which PostgreSQL breaks only after `deadlock_timeout` (1 s), with both writers
        /// and every meter behind them stalled (meters moving between nodes under load did it
        /// about once a second). In one order the later transaction waits, and then loses the race.
        func inKeyOrder() -> Readings {
            let meters = self.meterIDs
            let seqs = self.seqs
            guard meters.count > 1, (1..<meters.count).contains(where: { (meters[$0], seqs[$0]) < (meters[$0 - 1], seqs[$0 - 1]) }) else {
                return self
            }
            let order = meters.indices.sorted { (meters[$0], seqs[$0]) < (meters[$1], seqs[$1]) }
            return Readings(
                meterIDs: order.map { meters[$0] }, timestamps: order.map { self.timestamps[$0] }, seqs: order.map { seqs[$0] },
                positions: order.map { self.positions[$0] }, received: order.map { self.received[$0] }, kwh: order.map { self.kwh[$0] },
                statuses: order.map { self.statuses[$0] }, faults: order.map { self.faults[$0] },
                voltages: order.map { self.voltages[$0] }, registers: order.map { self.registers[$0] },
                spanStarts: order.map { self.spanStarts[$0] })
        }
    }

    struct Flags {
        var meterIDs: [Int64] = []
        var seqs: [Int64] = []
        var timestamps: [Int64] = []
        var months: [Int64] = []
        var rules: [String] = []
        var details: [String] = []

        mutating func append(meterID: Int64, reading: Reading, month: Int, rule: ValidationRule, detail: String) {
            self.meterIDs.append(meterID)
            self.seqs.append(reading.seq)
            self.timestamps.append(reading.timestampMs)
            self.months.append(Int64(month))
            self.rules.append(rule.rawValue)
            self.details.append(PostgreSQLCommitStatement.text(detail))
        }
    }

    struct Quarantined {
        var received: [Int64] = []
        var peers: [String] = []
        var lines: [Int64] = []
        var codes: [String] = []
        var details: [String] = []
        var raws: [ByteBuffer] = []
        var identities: [String] = []

        mutating func append(_ line: QuarantinedLine) {
            self.received.append(line.receivedMs)
            self.peers.append(PostgreSQLCommitStatement.text(line.peer))
            self.lines.append(Int64(line.line))
            self.codes.append(line.rejection.code.rawValue)
            self.details.append(PostgreSQLCommitStatement.text(line.rejection.detail))
            self.raws.append(ByteBuffer(bytes: line.raw))
            self.identities.append(line.peerIdentity.map(PostgreSQLCommitStatement.text) ?? "")
        }

        /// Drops the lines whose (receive time, peer, line number) is in `stored`: a connection's
        /// line numbers only grow, so those name the same rejected line, kept by an earlier attempt.
        mutating func removeAll(storedAs stored: Set<Key>) {
            let keep = self.received.indices.filter {
                !stored.contains(Key(receivedMs: self.received[$0], peer: self.peers[$0], line: self.lines[$0]))
            }
            guard keep.count < self.received.count else { return }
            self.received = keep.map { self.received[$0] }
            self.peers = keep.map { self.peers[$0] }
            self.lines = keep.map { self.lines[$0] }
            self.codes = keep.map { self.codes[$0] }
            self.details = keep.map { self.details[$0] }
            self.raws = keep.map { self.raws[$0] }
            self.identities = keep.map { self.identities[$0] }
        }

        struct Key: Hashable {
            var receivedMs: Int64
            var peer: String
            var line: Int64
        }
    }

    /// PostgreSQL's text refuses NUL; a rejected line's detail may quote one (the raw bytes are kept apart).
    static func text(_ value: String) -> String {
        value.contains("\0") ? value.replacingOccurrences(of: "\0", with: "\u{FFFD}") : value
    }

    let readings: Readings
    let flags: Flags
    let quarantined: Quarantined
    /// The month and day deltas left for `meter_month` and `meter_day`: the rest are in ``openShares``.
    let aggregates: BatchAggregates
    /// What the batch adds to its meters' open month and day (``PostgreSQLOpenPeriods``).
    let openShares: [Int64: PostgreSQLOpenPeriods.Share]
    let regionNames: [String]
    /// This node's name in the commit feed, and the batch's ``CommitFeedPayload``.
    let node: String
    let feedPayload: ByteBuffer

    var isEmpty: Bool {
        self.readings.meterIDs.isEmpty && self.flags.meterIDs.isEmpty && self.quarantined.received.isEmpty && self.aggregates.meters.isEmpty
            && self.aggregates.months.isEmpty && self.aggregates.days.isEmpty && self.aggregates.latencies.isEmpty
    }

    /// The call, with every array bound as a parameter. Rows of each table go in key order, so two
    /// nodes committing at once lock shared rows in the same order.
    var query: PostgresQuery {
        let null = Self.nullInteger
        let meters = self.aggregates.meters.sorted { $0.key < $1.key }
        let months = self.aggregates.months.sorted { ($0.key.meterID, $0.key.month) < ($1.key.meterID, $1.key.month) }
        let latencies = self.aggregates.latencies.sorted {
            ($0.key.month, $0.key.region, $0.key.bucket) < ($1.key.month, $1.key.region, $1.key.bucket)
        }
        let days = self.aggregates.days.sorted { ($0.key.day, $0.key.meterID) < ($1.key.day, $1.key.meterID) }
        let r = self.readings.inKeyOrder()
        let f = self.flags
        let q = self.quarantined
        let shares = meters.map { self.openShares[$0.key] }
        let openMonths = shares.map { $0?.month }
        let openDays = shares.map { $0?.day }
        // The batch and its commit feed row (migration `v2-commit-feed`) in one call of
        // `meterd_commit` (``commitFunctionDefinitionV7``), so one transaction: the feed row takes the
        // meter-days the batch started, and its `xid` comes back as the last row (the started days
        // come with a NULL `xid`). A call of one function is cheaper for the server to parse and plan
        // at every commit than the statement that did this before (a CTE around the call, an INSERT
        // and a UNION).
        return """
            SELECT started_day, started_meter, commit_xid FROM meterd_commit(\(self.node), \(self.feedPayload),
                \(PostgreSQLArray(r.meterIDs)), \(PostgreSQLArray(r.timestamps)), \(PostgreSQLArray(r.seqs)), \(PostgreSQLArray(r.positions)), \(PostgreSQLArray(r.received)), \(PostgreSQLArray(r.kwh)), \(PostgreSQLArray(r.statuses)), \(PostgreSQLArray(r.faults)),
                \(PostgreSQLArray(r.voltages)), \(PostgreSQLArray(r.registers)), \(PostgreSQLArray(r.spanStarts)),
                \(PostgreSQLArray(f.meterIDs)), \(PostgreSQLArray(f.seqs)), \(PostgreSQLArray(f.timestamps)), \(PostgreSQLArray(f.months)), \(PostgreSQLArray(f.rules)), \(PostgreSQLArray(f.details)),
                \(PostgreSQLArray(q.received)), \(PostgreSQLArray(q.peers)), \(PostgreSQLArray(q.lines)), \(PostgreSQLArray(q.codes)), \(PostgreSQLArray(q.details)), \(PostgreSQLArray(q.raws)), \(PostgreSQLArray(q.identities)),
                \(PostgreSQLArray(meters.map(\.key))), \(PostgreSQLArray(meters.map(\.value.previousHighWaterMark))), \(PostgreSQLArray(meters.map(\.value.highWaterMark))),
                \(PostgreSQLArray(meters.map(\.value.firstSeenMs))), \(PostgreSQLArray(meters.map(\.value.lastReceivedMs))), \(PostgreSQLArray(meters.map { $0.value.lastTimestampMs ?? null })),
                \(PostgreSQLArray(meters.map { $0.value.lastStatus.map { Int64($0.rawValue) } ?? null })), \(PostgreSQLArray(meters.map { $0.value.readings > 0 })),
                \(PostgreSQLArray(meters.map { $0.value.lastFault ?? "" })), \(PostgreSQLArray(meters.map { Int64($0.value.readings) })), \(PostgreSQLArray(meters.map { Int64($0.value.faults) })),
                \(PostgreSQLArray(meters.map { Int64($0.value.duplicates) })), \(PostgreSQLArray(meters.map { $0.value.lastReadingRowID ?? null })),
                \(PostgreSQLArray(meters.map { $0.value.lastRegister ?? .nan })), \(PostgreSQLArray(meters.map { $0.value.lastRegisterTimestampMs ?? null })),
                \(PostgreSQLArray(meters.map { $0.value.zeroRun.sinceMs ?? null })), \(PostgreSQLArray(meters.map(\.value.zeroRun.flagged))),
                \(PostgreSQLArray(meters.map { $0.value.firstDay.map(Int64.init) ?? null })),
                \(PostgreSQLArray(openMonths.map { $0.map { Int64($0.key) } ?? null })), \(PostgreSQLArray(openMonths.map { $0?.starts ?? false })),
                \(PostgreSQLArray(openMonths.map { $0?.delta.kwh ?? 0 })), \(PostgreSQLArray(openMonths.map { $0?.delta.revenue ?? 0 })),
                \(PostgreSQLArray(openMonths.map { Int64($0?.delta.readings ?? 0) })), \(PostgreSQLArray(openMonths.map { Int64($0?.delta.faults ?? 0) })),
                \(PostgreSQLArray(openMonths.map { Int64($0?.delta.good ?? 0) })), \(PostgreSQLArray(openMonths.map { Int64($0?.delta.fair ?? 0) })),
                \(PostgreSQLArray(openMonths.map { Int64($0?.delta.poor ?? 0) })), \(PostgreSQLArray(openMonths.map { $0?.delta.latencySumMs ?? 0 })),
                \(PostgreSQLArray(openMonths.map { $0?.delta.latencyMaxMs ?? 0 })), \(PostgreSQLArray(openMonths.map { Int64($0?.delta.estimated ?? 0) })),
                \(PostgreSQLArray(openMonths.map { $0?.delta.estimatedKwh ?? 0 })),
                \(PostgreSQLArray(openDays.map { $0.map { Int64($0.key) } ?? null })), \(PostgreSQLArray(openDays.map { $0?.starts ?? false })),
                \(PostgreSQLArray(openDays.map { Int64($0?.delta.readings ?? 0) })), \(PostgreSQLArray(openDays.map { $0?.delta.spacingSumMs ?? 0 })),
                \(PostgreSQLArray(openDays.map { Int64($0?.delta.spacingCount ?? 0) })),
                \(PostgreSQLArray(months.map(\.key.meterID))), \(PostgreSQLArray(months.map { Int64($0.key.month) })), \(PostgreSQLArray(months.map(\.value.kwh))), \(PostgreSQLArray(months.map(\.value.revenue))),
                \(PostgreSQLArray(months.map { Int64($0.value.readings) })), \(PostgreSQLArray(months.map { Int64($0.value.faults) })), \(PostgreSQLArray(months.map { Int64($0.value.good) })),
                \(PostgreSQLArray(months.map { Int64($0.value.fair) })), \(PostgreSQLArray(months.map { Int64($0.value.poor) })), \(PostgreSQLArray(months.map(\.value.latencySumMs))),
                \(PostgreSQLArray(months.map(\.value.latencyMaxMs))), \(PostgreSQLArray(months.map { Int64($0.value.estimated) })), \(PostgreSQLArray(months.map(\.value.estimatedKwh))),
                \(PostgreSQLArray(latencies.map { Int64($0.key.month) })), \(PostgreSQLArray(latencies.map { self.regionNames[$0.key.region] })),
                \(PostgreSQLArray(latencies.map { Int64($0.key.bucket) })), \(PostgreSQLArray(latencies.map { Int64($0.value.count) })), \(PostgreSQLArray(latencies.map(\.value.sumMs))),
                \(PostgreSQLArray(days.map { Int64($0.key.day) })), \(PostgreSQLArray(days.map(\.key.meterID))), \(PostgreSQLArray(days.map { Int64($0.value.readings) })),
                \(PostgreSQLArray(days.map(\.value.spacingSumMs))), \(PostgreSQLArray(days.map { Int64($0.value.spacingCount) })),
                \(self.aggregates.highRowID ?? null))
            """
    }

    /// The parameters of `meterd_commit_batch` (and of `meterd_commit` after its first two): the
    /// readings, flags, quarantined lines and meter rows, then the aggregates.
    private static let batchParameters = Self.readingAndMeterParameters + "\n" + Self.aggregateParameters

    private static let readingAndMeterParameters = """
            r_meter bigint[], r_ts bigint[], r_seq bigint[], r_position bigint[], r_received bigint[], r_kwh double precision[],
            r_status bigint[], r_fault text[], r_voltage double precision[], r_register double precision[], r_span bigint[],
            f_meter bigint[], f_seq bigint[], f_ts bigint[], f_month bigint[], f_rule text[], f_detail text[],
            q_received bigint[], q_peer text[], q_line bigint[], q_code text[], q_detail text[], q_raw bytea[], q_identity text[],
            m_id bigint[], m_previous_hwm bigint[], m_hwm bigint[], m_first_seen bigint[], m_last_received bigint[], m_last_ts bigint[],
            m_last_status bigint[], m_has_readings boolean[], m_last_fault text[], m_readings bigint[], m_faults bigint[],
            m_duplicates bigint[], m_last_position bigint[], m_last_register double precision[], m_last_register_ts bigint[],
            m_zero_since bigint[], m_zero_flagged boolean[], m_first_day bigint[],
        """

    private static let aggregateParameters = """
            mm_meter bigint[], mm_month bigint[], mm_kwh double precision[], mm_revenue double precision[], mm_readings bigint[],
            mm_faults bigint[], mm_good bigint[], mm_fair bigint[], mm_poor bigint[], mm_latency_sum bigint[], mm_latency_max bigint[],
            mm_estimated bigint[], mm_estimated_kwh double precision[],
            l_month bigint[], l_region text[], l_bucket bigint[], l_count bigint[], l_sum bigint[],
            d_day bigint[], d_meter bigint[], d_readings bigint[], d_spacing_sum bigint[], d_spacing_count bigint[],
            watermark bigint
        """

    /// `meterd_commit`, created by migration `v3-commit-batch-unnest-in-select`: `meterd_commit_batch`
    /// and the batch's `commit_feed` row, returning the meter-days the batch started and then the
    /// feed row's `xid` (the statement ``query`` sent before it did the same with a CTE).
    static let commitFunctionDefinition = Self.commitFunction(
        parameters: Self.batchParameters, batchArguments: Self.readingAndMeterArguments + ",\n" + Self.aggregateArguments)

    /// `meterd_commit`: calls `meterd_commit_batch` with its own parameters after the first two
    /// (`parameters`, passed on as `batchArguments`), writes the batch's `commit_feed` row and
    /// returns the meter-days the batch started, then the feed row's `xid`.
    private static func commitFunction(parameters: String, batchArguments: String) -> String {
        """
        CREATE FUNCTION meterd_commit(
            p_node text, p_payload bytea,
        \(parameters)
        ) RETURNS TABLE (started_day bigint, started_meter bigint, commit_xid bigint) LANGUAGE plpgsql
        SET plan_cache_mode = force_generic_plan
        AS $$
        DECLARE
            days bigint[];
            meters bigint[];
            feed_xid bigint;
        BEGIN
            SELECT COALESCE(array_agg(s.started_day), '{}'), COALESCE(array_agg(s.started_meter), '{}') INTO days, meters
            FROM meterd_commit_batch(
        \(batchArguments)) AS s;
            INSERT INTO commit_feed (node, payload, started_days, started_meters) VALUES (p_node, p_payload, days, meters)
            RETURNING commit_feed.xid INTO feed_xid;
            RETURN QUERY SELECT unnest(days), unnest(meters), NULL::bigint;
            started_day := NULL;
            started_meter := NULL;
            commit_xid := feed_xid;
            RETURN NEXT;
        END
        $$
        """
    }

    /// The names of ``readingAndMeterParameters``, ``openPeriodParameters`` and
    /// ``aggregateParameters``, as `meterd_commit` passes them on.
    private static let readingAndMeterArguments = """
                r_meter, r_ts, r_seq, r_position, r_received, r_kwh, r_status, r_fault, r_voltage, r_register, r_span,
                f_meter, f_seq, f_ts, f_month, f_rule, f_detail,
                q_received, q_peer, q_line, q_code, q_detail, q_raw, q_identity,
                m_id, m_previous_hwm, m_hwm, m_first_seen, m_last_received, m_last_ts, m_last_status, m_has_readings, m_last_fault,
                m_readings, m_faults, m_duplicates, m_last_position, m_last_register, m_last_register_ts, m_zero_since,
                m_zero_flagged, m_first_day
        """

    private static let openPeriodArguments = """
                om_month, om_starts, om_kwh, om_revenue, om_readings, om_faults, om_good, om_fair, om_poor, om_latency_sum,
                om_latency_max, om_estimated, om_estimated_kwh,
                od_day, od_starts, od_readings, od_spacing_sum, od_spacing_count
        """

    private static let aggregateArguments = """
                mm_meter, mm_month, mm_kwh, mm_revenue, mm_readings, mm_faults, mm_good, mm_fair, mm_poor, mm_latency_sum,
                mm_latency_max, mm_estimated, mm_estimated_kwh,
                l_month, l_region, l_bucket, l_count, l_sum,
                d_day, d_meter, d_readings, d_spacing_sum, d_spacing_count,
                watermark
        """

    /// `meterd_commit_batch` as migration `v3-commit-batch-unnest-in-select` replaces it: the same
    /// signature, checks and effects as ``functionDefinition``, cheaper for PostgreSQL.
    ///
    /// - Arrays are unnested in the select list (`SELECT unnest(a), unnest(b), …`, evaluated in
    ///   lockstep) rather than in FROM (`unnest(a, b, …)`), which fills a tuplestore per array and
    ///   reads it back: 40 inserts of 5,000 rows of eleven columns took 220–230 ms against 490–500 ms.
    ///   Arrays of one call always have equal lengths, so the rows are the same.
    /// - `plan_cache_mode = force_generic_plan`: every statement of the function has the same shape
    ///   at every call (a scan of unnested arrays joined on keys), so it is planned once per
    ///   session instead of custom-planned for each batch's array lengths.
    static let functionDefinitionV3 = """
        CREATE OR REPLACE FUNCTION meterd_commit_batch(
        \(Self.batchParameters)
        ) RETURNS TABLE (started_day bigint, started_meter bigint) LANGUAGE plpgsql
        SET plan_cache_mode = force_generic_plan
        AS $$
        DECLARE
            null_integer constant bigint := -9223372036854775808;
            updated bigint;
        BEGIN
            INSERT INTO reading (meter_id, ts_ms, seq, position, received_ms, kwh, status, fault, voltage, register_kwh, span_start_ms)
            SELECT meter, ts, seq, position, received, kwh, status, NULLIF(fault, ''), NULLIF(voltage, 'NaN'), NULLIF(register, 'NaN'),
                   NULLIF(span, null_integer)
            FROM (SELECT unnest(r_meter) AS meter, unnest(r_ts) AS ts, unnest(r_seq) AS seq, unnest(r_position) AS position,
                         unnest(r_received) AS received, unnest(r_kwh) AS kwh, unnest(r_status) AS status, unnest(r_fault) AS fault,
                         unnest(r_voltage) AS voltage, unnest(r_register) AS register, unnest(r_span) AS span) AS r;

            INSERT INTO validation_flag (meter_id, seq, ts_ms, month, rule, detail)
            SELECT unnest(f_meter), unnest(f_seq), unnest(f_ts), unnest(f_month), unnest(f_rule), unnest(f_detail);

            INSERT INTO quarantine (received_ms, peer, line, code, detail, raw, peer_identity)
            SELECT received, peer, line, code, detail, raw, NULLIF(identity, '')
            FROM (SELECT unnest(q_received) AS received, unnest(q_peer) AS peer, unnest(q_line) AS line, unnest(q_code) AS code,
                         unnest(q_detail) AS detail, unnest(q_raw) AS raw, unnest(q_identity) AS identity) AS q;

            UPDATE meter SET
                hwm_seq = d.hwm,
                first_seen_ms = COALESCE(meter.first_seen_ms, d.first_seen),
                last_received_ms = d.last_received,
                last_ts_ms = COALESCE(NULLIF(d.last_ts, null_integer), meter.last_ts_ms),
                last_status = COALESCE(NULLIF(d.last_status, null_integer), meter.last_status),
                last_fault = CASE WHEN d.has_readings THEN NULLIF(d.last_fault, '') ELSE meter.last_fault END,
                readings_total = meter.readings_total + d.readings,
                faults_total = meter.faults_total + d.faults,
                duplicates_total = meter.duplicates_total + d.duplicates,
                inactive_since_ms = NULL,
                last_reading_position = COALESCE(NULLIF(d.last_position, null_integer), meter.last_reading_position),
                last_register_kwh = CASE WHEN d.has_readings THEN NULLIF(d.last_register, 'NaN') ELSE meter.last_register_kwh END,
                last_register_ts_ms = CASE WHEN d.has_readings THEN NULLIF(d.last_register_ts, null_integer) ELSE meter.last_register_ts_ms END,
                zero_since_ms = CASE WHEN d.has_readings THEN NULLIF(d.zero_since, null_integer) ELSE meter.zero_since_ms END,
                zero_flagged = CASE WHEN d.has_readings THEN d.zero_flagged ELSE meter.zero_flagged END,
                first_reading_day = CASE WHEN d.first_day = null_integer THEN meter.first_reading_day
                                         ELSE LEAST(COALESCE(meter.first_reading_day, d.first_day), d.first_day) END
            FROM (SELECT unnest(m_id) AS id, unnest(m_previous_hwm) AS previous_hwm, unnest(m_hwm) AS hwm,
                         unnest(m_first_seen) AS first_seen, unnest(m_last_received) AS last_received, unnest(m_last_ts) AS last_ts,
                         unnest(m_last_status) AS last_status, unnest(m_has_readings) AS has_readings,
                         unnest(m_last_fault) AS last_fault, unnest(m_readings) AS readings, unnest(m_faults) AS faults,
                         unnest(m_duplicates) AS duplicates, unnest(m_last_position) AS last_position,
                         unnest(m_last_register) AS last_register, unnest(m_last_register_ts) AS last_register_ts,
                         unnest(m_zero_since) AS zero_since, unnest(m_zero_flagged) AS zero_flagged,
                         unnest(m_first_day) AS first_day) AS d
            WHERE meter.id = d.id AND meter.hwm_seq = d.previous_hwm;
            GET DIAGNOSTICS updated = ROW_COUNT;
            IF updated <> cardinality(m_id) THEN
                RAISE EXCEPTION 'the high-water mark of % meter(s) moved under this batch', cardinality(m_id) - updated
                    USING ERRCODE = '40001';
            END IF;

            INSERT INTO meter_month AS mm (meter_id, month, kwh, revenue, readings, faults, good, fair, poor,
                                           latency_sum_ms, latency_count, latency_max_ms, estimated, estimated_kwh)
            SELECT meter, month, kwh, revenue, readings, faults, good, fair, poor, latency_sum, readings, latency_max, estimated, estimated_kwh
            FROM (SELECT unnest(mm_meter) AS meter, unnest(mm_month) AS month, unnest(mm_kwh) AS kwh, unnest(mm_revenue) AS revenue,
                         unnest(mm_readings) AS readings, unnest(mm_faults) AS faults, unnest(mm_good) AS good,
                         unnest(mm_fair) AS fair, unnest(mm_poor) AS poor, unnest(mm_latency_sum) AS latency_sum,
                         unnest(mm_latency_max) AS latency_max, unnest(mm_estimated) AS estimated,
                         unnest(mm_estimated_kwh) AS estimated_kwh) AS m
            ON CONFLICT (meter_id, month) DO UPDATE SET
                kwh = mm.kwh + excluded.kwh, revenue = mm.revenue + excluded.revenue, readings = mm.readings + excluded.readings,
                faults = mm.faults + excluded.faults, good = mm.good + excluded.good, fair = mm.fair + excluded.fair,
                poor = mm.poor + excluded.poor, latency_sum_ms = mm.latency_sum_ms + excluded.latency_sum_ms,
                latency_count = mm.latency_count + excluded.latency_count,
                latency_max_ms = GREATEST(mm.latency_max_ms, excluded.latency_max_ms),
                estimated = mm.estimated + excluded.estimated, estimated_kwh = mm.estimated_kwh + excluded.estimated_kwh;

            INSERT INTO latency_month AS lm (month, region, bucket, count, sum_ms)
            SELECT unnest(l_month), unnest(l_region), unnest(l_bucket), unnest(l_count), unnest(l_sum)
            ON CONFLICT (month, region, bucket) DO UPDATE SET count = lm.count + excluded.count, sum_ms = lm.sum_ms + excluded.sum_ms;

            -- The meter-days this batch created (xmax is 0 on a row inserted rather than updated): each is a
            -- meter's first reading of a day, one more reporting meter for the read success rate.
            RETURN QUERY
            WITH written AS (
                INSERT INTO meter_day AS md (day, meter_id, readings, spacing_sum_ms, spacing_count)
                SELECT unnest(d_day), unnest(d_meter), unnest(d_readings), unnest(d_spacing_sum), unnest(d_spacing_count)
                ON CONFLICT (day, meter_id) DO UPDATE SET readings = md.readings + excluded.readings,
                    spacing_sum_ms = md.spacing_sum_ms + excluded.spacing_sum_ms, spacing_count = md.spacing_count + excluded.spacing_count
                RETURNING md.day, md.meter_id, md.xmax::text = '0' AS inserted
            )
            SELECT written.day::bigint, written.meter_id FROM written WHERE written.inserted;

            IF watermark <> null_integer THEN
                UPDATE ingest_watermark SET reading_position = GREATEST(reading_position, watermark) WHERE id = 1;
            END IF;
        END
        $$
        """

    /// `meterd_commit_batch`, created by migration `v1-schema` (and replaced by `v3-commit-batch-unnest-in-select`
    /// with ``functionDefinitionV3``). Changing it takes a new migration with `CREATE OR REPLACE FUNCTION`.
    static let functionDefinition = """
        CREATE FUNCTION meterd_commit_batch(
        \(Self.batchParameters)
        ) RETURNS TABLE (started_day bigint, started_meter bigint) LANGUAGE plpgsql AS $$
        DECLARE
            null_integer constant bigint := -9223372036854775808;
            updated bigint;
        BEGIN
            INSERT INTO reading (meter_id, ts_ms, seq, position, received_ms, kwh, status, fault, voltage, register_kwh, span_start_ms)
            SELECT meter, ts, seq, position, received, kwh, status, NULLIF(fault, ''), NULLIF(voltage, 'NaN'), NULLIF(register, 'NaN'),
                   NULLIF(span, null_integer)
            FROM unnest(r_meter, r_ts, r_seq, r_position, r_received, r_kwh, r_status, r_fault, r_voltage, r_register, r_span)
                AS r(meter, ts, seq, position, received, kwh, status, fault, voltage, register, span);

            INSERT INTO validation_flag (meter_id, seq, ts_ms, month, rule, detail)
            SELECT * FROM unnest(f_meter, f_seq, f_ts, f_month, f_rule, f_detail);

            INSERT INTO quarantine (received_ms, peer, line, code, detail, raw, peer_identity)
            SELECT received, peer, line, code, detail, raw, NULLIF(identity, '')
            FROM unnest(q_received, q_peer, q_line, q_code, q_detail, q_raw, q_identity) AS q(received, peer, line, code, detail, raw, identity);

            UPDATE meter SET
                hwm_seq = d.hwm,
                first_seen_ms = COALESCE(meter.first_seen_ms, d.first_seen),
                last_received_ms = d.last_received,
                last_ts_ms = COALESCE(NULLIF(d.last_ts, null_integer), meter.last_ts_ms),
                last_status = COALESCE(NULLIF(d.last_status, null_integer), meter.last_status),
                last_fault = CASE WHEN d.has_readings THEN NULLIF(d.last_fault, '') ELSE meter.last_fault END,
                readings_total = meter.readings_total + d.readings,
                faults_total = meter.faults_total + d.faults,
                duplicates_total = meter.duplicates_total + d.duplicates,
                inactive_since_ms = NULL,
                last_reading_position = COALESCE(NULLIF(d.last_position, null_integer), meter.last_reading_position),
                last_register_kwh = CASE WHEN d.has_readings THEN NULLIF(d.last_register, 'NaN') ELSE meter.last_register_kwh END,
                last_register_ts_ms = CASE WHEN d.has_readings THEN NULLIF(d.last_register_ts, null_integer) ELSE meter.last_register_ts_ms END,
                zero_since_ms = CASE WHEN d.has_readings THEN NULLIF(d.zero_since, null_integer) ELSE meter.zero_since_ms END,
                zero_flagged = CASE WHEN d.has_readings THEN d.zero_flagged ELSE meter.zero_flagged END,
                first_reading_day = CASE WHEN d.first_day = null_integer THEN meter.first_reading_day
                                         ELSE LEAST(COALESCE(meter.first_reading_day, d.first_day), d.first_day) END
            FROM unnest(m_id, m_previous_hwm, m_hwm, m_first_seen, m_last_received, m_last_ts, m_last_status, m_has_readings, m_last_fault,
                        m_readings, m_faults, m_duplicates, m_last_position, m_last_register, m_last_register_ts, m_zero_since,
                        m_zero_flagged, m_first_day)
                AS d(id, previous_hwm, hwm, first_seen, last_received, last_ts, last_status, has_readings, last_fault, readings, faults,
                     duplicates, last_position, last_register, last_register_ts, zero_since, zero_flagged, first_day)
            WHERE meter.id = d.id AND meter.hwm_seq = d.previous_hwm;
            GET DIAGNOSTICS updated = ROW_COUNT;
            IF updated <> cardinality(m_id) THEN
                RAISE EXCEPTION 'the high-water mark of % meter(s) moved under this batch', cardinality(m_id) - updated
                    USING ERRCODE = '40001';
            END IF;

            INSERT INTO meter_month AS mm (meter_id, month, kwh, revenue, readings, faults, good, fair, poor,
                                           latency_sum_ms, latency_count, latency_max_ms, estimated, estimated_kwh)
            SELECT meter, month, kwh, revenue, readings, faults, good, fair, poor, latency_sum, readings, latency_max, estimated, estimated_kwh
            FROM unnest(mm_meter, mm_month, mm_kwh, mm_revenue, mm_readings, mm_faults, mm_good, mm_fair, mm_poor, mm_latency_sum,
                        mm_latency_max, mm_estimated, mm_estimated_kwh)
                AS m(meter, month, kwh, revenue, readings, faults, good, fair, poor, latency_sum, latency_max, estimated, estimated_kwh)
            ON CONFLICT (meter_id, month) DO UPDATE SET
                kwh = mm.kwh + excluded.kwh, revenue = mm.revenue + excluded.revenue, readings = mm.readings + excluded.readings,
                faults = mm.faults + excluded.faults, good = mm.good + excluded.good, fair = mm.fair + excluded.fair,
                poor = mm.poor + excluded.poor, latency_sum_ms = mm.latency_sum_ms + excluded.latency_sum_ms,
                latency_count = mm.latency_count + excluded.latency_count,
                latency_max_ms = GREATEST(mm.latency_max_ms, excluded.latency_max_ms),
                estimated = mm.estimated + excluded.estimated, estimated_kwh = mm.estimated_kwh + excluded.estimated_kwh;

            INSERT INTO latency_month AS lm (month, region, bucket, count, sum_ms)
            SELECT * FROM unnest(l_month, l_region, l_bucket, l_count, l_sum)
            ON CONFLICT (month, region, bucket) DO UPDATE SET count = lm.count + excluded.count, sum_ms = lm.sum_ms + excluded.sum_ms;

            -- The meter-days this batch created (xmax is 0 on a row inserted rather than updated): each is a
            -- meter's first reading of a day, one more reporting meter for the read success rate.
            RETURN QUERY
            WITH written AS (
                INSERT INTO meter_day AS md (day, meter_id, readings, spacing_sum_ms, spacing_count)
                SELECT * FROM unnest(d_day, d_meter, d_readings, d_spacing_sum, d_spacing_count)
                ON CONFLICT (day, meter_id) DO UPDATE SET readings = md.readings + excluded.readings,
                    spacing_sum_ms = md.spacing_sum_ms + excluded.spacing_sum_ms, spacing_count = md.spacing_count + excluded.spacing_count
                RETURNING md.day, md.meter_id, md.xmax::text = '0' AS inserted
            )
            SELECT written.day::bigint, written.meter_id FROM written WHERE written.inserted;

            IF watermark <> null_integer THEN
                UPDATE ingest_watermark SET reading_position = GREATEST(reading_position, watermark) WHERE id = 1;
            END IF;
        END
        $$
        """
}

extension PostgreSQLCommitStatement {
    /// The parameters of `meterd_commit_batch` since migration `v7-open-periods-in-meter-rows`: those
    /// of ``batchParameters`` with each meter's share of its open month (`om_`) and open day (`od_`)
    /// after its row's (``PostgreSQLOpenPeriods``). `om_month` (`od_day`) is NULL's sentinel where the
    /// batch leaves the meter's open month (day) as it is; `om_starts` (`od_starts`) says the row's
    /// open period moves out to `meter_month` (`meter_day`) and this one takes its place.
    private static let batchParametersV7 =
        Self.readingAndMeterParameters + "\n" + Self.openPeriodParameters + "\n" + Self.aggregateParameters

    /// Each meter's share of its open month (`om_`) and open day (`od_`), since v7.
    private static let openPeriodParameters = """
            om_month bigint[], om_starts boolean[], om_kwh double precision[], om_revenue double precision[], om_readings bigint[],
            om_faults bigint[], om_good bigint[], om_fair bigint[], om_poor bigint[], om_latency_sum bigint[], om_latency_max bigint[],
            om_estimated bigint[], om_estimated_kwh double precision[],
            od_day bigint[], od_starts boolean[], od_readings bigint[], od_spacing_sum bigint[], od_spacing_count bigint[],
        """

    /// `meterd_commit` as migration `v7-open-periods-in-meter-rows` creates it: as
    /// ``commitFunctionDefinition``, with the parameters of ``batchParametersV7``.
    static let commitFunctionDefinitionV7 = Self.commitFunction(
        parameters: Self.batchParametersV7,
        batchArguments: Self.readingAndMeterArguments + ",\n" + Self.openPeriodArguments + ",\n" + Self.aggregateArguments)

    /// `meterd_commit_batch` as migration `v7-open-periods-in-meter-rows` creates it: the effects of
    /// ``functionDefinitionV3`` (with v5's planner settings), except that each meter's newest month
    /// and day of the batch add to the open sums in its `meter` row (``PostgreSQLOpenPeriods``).
    ///
    /// A meter whose open period ends has its old sums moved to `meter_month` (`meter_day`) first,
    /// read from its row before the row's update; the update's `hwm_seq` check then proves that no
    /// other node changed the row in between, since open sums change only with readings. A
    /// meter-day the batch opens was started by it unless `meter_day` has its row already (rows
    /// written before v7, or by a late reading).
    ///
    /// The move-out locks a month (day) row before the meter rows, the late readings' upserts
    /// after them, and still no two commits wait for each other in a circle: a move-out takes the
    /// period the row holds as open, and a late reading's upsert one older than the period its
    /// writer knows as open, which is never newer than the row's; so no move-out and upsert ever
    /// meet on one row, and move-outs lock their rows in meter order. (A writer knows the open
    /// periods of every meter it loaded or registered; should one be missing, its deltas all go to
    /// the tables, and a deadlock the server breaks is one more lost race.) (Moving the sums out in the
    /// update's own statement, with data-modifying CTEs, took PostgreSQL 6 % more per reading in
    /// (b) even when nothing moved.)
    static let functionDefinitionV7 = """
        CREATE FUNCTION meterd_commit_batch(
        \(Self.batchParametersV7)
        ) RETURNS TABLE (started_day bigint, started_meter bigint) LANGUAGE plpgsql
        SET plan_cache_mode = force_generic_plan
        SET enable_hashjoin = off SET enable_mergejoin = off SET enable_seqscan = off SET enable_material = off
        AS $$
        DECLARE
            null_integer constant bigint := -9223372036854775808;
            updated bigint;
            months_ending bigint[];
            days_ending bigint[];
        BEGIN
            INSERT INTO reading (meter_id, ts_ms, seq, position, received_ms, kwh, status, fault, voltage, register_kwh, span_start_ms)
            SELECT meter, ts, seq, position, received, kwh, status, NULLIF(fault, ''), NULLIF(voltage, 'NaN'), NULLIF(register, 'NaN'),
                   NULLIF(span, null_integer)
            FROM (SELECT unnest(r_meter) AS meter, unnest(r_ts) AS ts, unnest(r_seq) AS seq, unnest(r_position) AS position,
                         unnest(r_received) AS received, unnest(r_kwh) AS kwh, unnest(r_status) AS status, unnest(r_fault) AS fault,
                         unnest(r_voltage) AS voltage, unnest(r_register) AS register, unnest(r_span) AS span) AS r;

            INSERT INTO validation_flag (meter_id, seq, ts_ms, month, rule, detail)
            SELECT unnest(f_meter), unnest(f_seq), unnest(f_ts), unnest(f_month), unnest(f_rule), unnest(f_detail);

            INSERT INTO quarantine (received_ms, peer, line, code, detail, raw, peer_identity)
            SELECT received, peer, line, code, detail, raw, NULLIF(identity, '')
            FROM (SELECT unnest(q_received) AS received, unnest(q_peer) AS peer, unnest(q_line) AS line, unnest(q_code) AS code,
                         unnest(q_detail) AS detail, unnest(q_raw) AS raw, unnest(q_identity) AS identity) AS q;

            IF true = ANY(om_starts) THEN
                SELECT array_agg(e.id ORDER BY e.id) INTO months_ending
                FROM (SELECT unnest(m_id) AS id, unnest(om_starts) AS starts) AS e WHERE e.starts;
                INSERT INTO meter_month AS mm (meter_id, month, kwh, revenue, readings, faults, good, fair, poor,
                                               latency_sum_ms, latency_count, latency_max_ms, estimated, estimated_kwh)
                SELECT id, open_month, open_kwh, open_revenue, open_readings, open_faults, open_good, open_fair, open_poor,
                       open_latency_sum_ms, open_latency_count, open_latency_max_ms, open_estimated, open_estimated_kwh
                FROM meter WHERE id = ANY(months_ending) AND open_month IS NOT NULL ORDER BY id
                ON CONFLICT (meter_id, month) DO UPDATE SET
                    kwh = mm.kwh + excluded.kwh, revenue = mm.revenue + excluded.revenue, readings = mm.readings + excluded.readings,
                    faults = mm.faults + excluded.faults, good = mm.good + excluded.good, fair = mm.fair + excluded.fair,
                    poor = mm.poor + excluded.poor, latency_sum_ms = mm.latency_sum_ms + excluded.latency_sum_ms,
                    latency_count = mm.latency_count + excluded.latency_count,
                    latency_max_ms = GREATEST(mm.latency_max_ms, excluded.latency_max_ms),
                    estimated = mm.estimated + excluded.estimated, estimated_kwh = mm.estimated_kwh + excluded.estimated_kwh;
            END IF;
            IF true = ANY(od_starts) THEN
                SELECT array_agg(e.id ORDER BY e.id) INTO days_ending
                FROM (SELECT unnest(m_id) AS id, unnest(od_starts) AS starts) AS e WHERE e.starts;
                INSERT INTO meter_day AS md (day, meter_id, readings, spacing_sum_ms, spacing_count)
                SELECT open_day, id, open_day_readings, open_day_spacing_sum_ms, open_day_spacing_count
                FROM meter WHERE id = ANY(days_ending) AND open_day IS NOT NULL ORDER BY open_day, id
                ON CONFLICT (day, meter_id) DO UPDATE SET readings = md.readings + excluded.readings,
                    spacing_sum_ms = md.spacing_sum_ms + excluded.spacing_sum_ms, spacing_count = md.spacing_count + excluded.spacing_count;
                -- Opened here and absent from the table: the meter's first reading of that day.
                RETURN QUERY
                SELECT o.day, o.id FROM (SELECT unnest(m_id) AS id, unnest(od_day) AS day, unnest(od_starts) AS starts) AS o
                WHERE o.starts AND NOT EXISTS (SELECT 1 FROM meter_day WHERE meter_day.day = o.day AND meter_day.meter_id = o.id);
            END IF;

            UPDATE meter SET
                hwm_seq = d.hwm,
                first_seen_ms = COALESCE(meter.first_seen_ms, d.first_seen),
                last_received_ms = d.last_received,
                last_ts_ms = COALESCE(NULLIF(d.last_ts, null_integer), meter.last_ts_ms),
                last_status = COALESCE(NULLIF(d.last_status, null_integer), meter.last_status),
                last_fault = CASE WHEN d.has_readings THEN NULLIF(d.last_fault, '') ELSE meter.last_fault END,
                readings_total = meter.readings_total + d.readings,
                faults_total = meter.faults_total + d.faults,
                duplicates_total = meter.duplicates_total + d.duplicates,
                inactive_since_ms = NULL,
                last_reading_position = COALESCE(NULLIF(d.last_position, null_integer), meter.last_reading_position),
                last_register_kwh = CASE WHEN d.has_readings THEN NULLIF(d.last_register, 'NaN') ELSE meter.last_register_kwh END,
                last_register_ts_ms = CASE WHEN d.has_readings THEN NULLIF(d.last_register_ts, null_integer) ELSE meter.last_register_ts_ms END,
                zero_since_ms = CASE WHEN d.has_readings THEN NULLIF(d.zero_since, null_integer) ELSE meter.zero_since_ms END,
                zero_flagged = CASE WHEN d.has_readings THEN d.zero_flagged ELSE meter.zero_flagged END,
                first_reading_day = CASE WHEN d.first_day = null_integer THEN meter.first_reading_day
                                         ELSE LEAST(COALESCE(meter.first_reading_day, d.first_day), d.first_day) END,
                open_month = CASE WHEN d.om_month = null_integer THEN meter.open_month ELSE d.om_month END,
                open_kwh = CASE WHEN d.om_starts THEN d.om_kwh ELSE meter.open_kwh + d.om_kwh END,
                open_revenue = CASE WHEN d.om_starts THEN d.om_revenue ELSE meter.open_revenue + d.om_revenue END,
                open_readings = CASE WHEN d.om_starts THEN d.om_readings ELSE meter.open_readings + d.om_readings END,
                open_faults = CASE WHEN d.om_starts THEN d.om_faults ELSE meter.open_faults + d.om_faults END,
                open_good = CASE WHEN d.om_starts THEN d.om_good ELSE meter.open_good + d.om_good END,
                open_fair = CASE WHEN d.om_starts THEN d.om_fair ELSE meter.open_fair + d.om_fair END,
                open_poor = CASE WHEN d.om_starts THEN d.om_poor ELSE meter.open_poor + d.om_poor END,
                open_latency_sum_ms = CASE WHEN d.om_starts THEN d.om_latency_sum ELSE meter.open_latency_sum_ms + d.om_latency_sum END,
                open_latency_count = CASE WHEN d.om_starts THEN d.om_readings ELSE meter.open_latency_count + d.om_readings END,
                open_latency_max_ms = CASE WHEN d.om_starts THEN d.om_latency_max
                                           ELSE GREATEST(meter.open_latency_max_ms, d.om_latency_max) END,
                open_estimated = CASE WHEN d.om_starts THEN d.om_estimated ELSE meter.open_estimated + d.om_estimated END,
                open_estimated_kwh = CASE WHEN d.om_starts THEN d.om_estimated_kwh ELSE meter.open_estimated_kwh + d.om_estimated_kwh END,
                open_day = CASE WHEN d.od_day = null_integer THEN meter.open_day ELSE d.od_day END,
                open_day_readings = CASE WHEN d.od_starts THEN d.od_readings ELSE meter.open_day_readings + d.od_readings END,
                open_day_spacing_sum_ms = CASE WHEN d.od_starts THEN d.od_spacing_sum
                                               ELSE meter.open_day_spacing_sum_ms + d.od_spacing_sum END,
                open_day_spacing_count = CASE WHEN d.od_starts THEN d.od_spacing_count
                                              ELSE meter.open_day_spacing_count + d.od_spacing_count END
            FROM (SELECT unnest(m_id) AS id, unnest(m_previous_hwm) AS previous_hwm, unnest(m_hwm) AS hwm,
                         unnest(m_first_seen) AS first_seen, unnest(m_last_received) AS last_received, unnest(m_last_ts) AS last_ts,
                         unnest(m_last_status) AS last_status, unnest(m_has_readings) AS has_readings,
                         unnest(m_last_fault) AS last_fault, unnest(m_readings) AS readings, unnest(m_faults) AS faults,
                         unnest(m_duplicates) AS duplicates, unnest(m_last_position) AS last_position,
                         unnest(m_last_register) AS last_register, unnest(m_last_register_ts) AS last_register_ts,
                         unnest(m_zero_since) AS zero_since, unnest(m_zero_flagged) AS zero_flagged,
                         unnest(m_first_day) AS first_day,
                         unnest(om_month) AS om_month, unnest(om_starts) AS om_starts, unnest(om_kwh) AS om_kwh,
                         unnest(om_revenue) AS om_revenue, unnest(om_readings) AS om_readings, unnest(om_faults) AS om_faults,
                         unnest(om_good) AS om_good, unnest(om_fair) AS om_fair, unnest(om_poor) AS om_poor,
                         unnest(om_latency_sum) AS om_latency_sum, unnest(om_latency_max) AS om_latency_max,
                         unnest(om_estimated) AS om_estimated, unnest(om_estimated_kwh) AS om_estimated_kwh,
                         unnest(od_day) AS od_day, unnest(od_starts) AS od_starts, unnest(od_readings) AS od_readings,
                         unnest(od_spacing_sum) AS od_spacing_sum, unnest(od_spacing_count) AS od_spacing_count) AS d
            WHERE meter.id = d.id AND meter.hwm_seq = d.previous_hwm;
            GET DIAGNOSTICS updated = ROW_COUNT;
            IF updated <> cardinality(m_id) THEN
                RAISE EXCEPTION 'the high-water mark of % meter(s) moved under this batch', cardinality(m_id) - updated
                    USING ERRCODE = '40001';
            END IF;

            INSERT INTO meter_month AS mm (meter_id, month, kwh, revenue, readings, faults, good, fair, poor,
                                           latency_sum_ms, latency_count, latency_max_ms, estimated, estimated_kwh)
            SELECT meter, month, kwh, revenue, readings, faults, good, fair, poor, latency_sum, readings, latency_max, estimated, estimated_kwh
            FROM (SELECT unnest(mm_meter) AS meter, unnest(mm_month) AS month, unnest(mm_kwh) AS kwh, unnest(mm_revenue) AS revenue,
                         unnest(mm_readings) AS readings, unnest(mm_faults) AS faults, unnest(mm_good) AS good,
                         unnest(mm_fair) AS fair, unnest(mm_poor) AS poor, unnest(mm_latency_sum) AS latency_sum,
                         unnest(mm_latency_max) AS latency_max, unnest(mm_estimated) AS estimated,
                         unnest(mm_estimated_kwh) AS estimated_kwh) AS m
            ON CONFLICT (meter_id, month) DO UPDATE SET
                kwh = mm.kwh + excluded.kwh, revenue = mm.revenue + excluded.revenue, readings = mm.readings + excluded.readings,
                faults = mm.faults + excluded.faults, good = mm.good + excluded.good, fair = mm.fair + excluded.fair,
                poor = mm.poor + excluded.poor, latency_sum_ms = mm.latency_sum_ms + excluded.latency_sum_ms,
                latency_count = mm.latency_count + excluded.latency_count,
                latency_max_ms = GREATEST(mm.latency_max_ms, excluded.latency_max_ms),
                estimated = mm.estimated + excluded.estimated, estimated_kwh = mm.estimated_kwh + excluded.estimated_kwh;

            INSERT INTO latency_month AS lm (month, region, bucket, count, sum_ms)
            SELECT unnest(l_month), unnest(l_region), unnest(l_bucket), unnest(l_count), unnest(l_sum)
            ON CONFLICT (month, region, bucket) DO UPDATE SET count = lm.count + excluded.count, sum_ms = lm.sum_ms + excluded.sum_ms;

            -- The meter-days this batch created (xmax is 0 on a row inserted rather than updated): each is a
            -- late reading's first of a day, one more reporting meter for the read success rate.
            RETURN QUERY
            WITH written AS (
                INSERT INTO meter_day AS md (day, meter_id, readings, spacing_sum_ms, spacing_count)
                SELECT unnest(d_day), unnest(d_meter), unnest(d_readings), unnest(d_spacing_sum), unnest(d_spacing_count)
                ON CONFLICT (day, meter_id) DO UPDATE SET readings = md.readings + excluded.readings,
                    spacing_sum_ms = md.spacing_sum_ms + excluded.spacing_sum_ms, spacing_count = md.spacing_count + excluded.spacing_count
                RETURNING md.day, md.meter_id, md.xmax::text = '0' AS inserted
            )
            SELECT written.day::bigint, written.meter_id FROM written WHERE written.inserted;

            IF watermark <> null_integer THEN
                UPDATE ingest_watermark SET reading_position = GREATEST(reading_position, watermark) WHERE id = 1;
            END IF;
        END
        $$
        """

    /// `meterd_commit_batch` as migration `v8-duplicates-never-lose` replaces it: ``functionDefinitionV7``
    /// (same signature and effects), except that a meter row the batch brings only duplicates to
    /// is updated whatever its `hwm_seq` now holds.
    ///
    /// Such a row's update only counts the duplicates, takes the later receive time and clears
    /// the inactive mark: no reading, period or register of it changes, so it cannot contradict
    /// what another node committed meanwhile, and its `hwm_seq` stays the higher of the two. It
    /// used to lose the race like a batch with readings whenever the other node moved that meter
    /// on, taking every other meter's readings of the batch back with it: a node acking another
    /// node's stream as its duplicates (a meter sent to both) lost every few commits on a busy
    /// machine, and each loss held the meter back longer.
    static let functionDefinitionV8: String = {
        var definition = Self.functionDefinitionV7
        for (old, new) in [
            ("CREATE FUNCTION meterd_commit_batch(", "CREATE OR REPLACE FUNCTION meterd_commit_batch("),
            ("hwm_seq = d.hwm,", "hwm_seq = GREATEST(meter.hwm_seq, d.hwm),"),
            ("last_received_ms = d.last_received,", "last_received_ms = GREATEST(meter.last_received_ms, d.last_received),"),
            (
                "WHERE meter.id = d.id AND meter.hwm_seq = d.previous_hwm;",
                "WHERE meter.id = d.id AND (meter.hwm_seq = d.previous_hwm OR NOT d.has_readings);"
            ),
        ] {
            let parts = definition.components(separatedBy: old)
            precondition(parts.count == 2, "v8 changes exactly one \(old) of functionDefinitionV7")
            definition = parts.joined(separator: new)
        }
        return definition
    }()
}

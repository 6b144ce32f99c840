import GRDB

/// The company's own data beside the meters (SPEC.md section 4) and the aggregates the KPIs read.
///
/// CSV dates are the company's local calendar dates, so their month is the text's `YYYY-MM`: months
/// are stored as `yyyymm` integers computed on import, and every rollup is keyed by them.
enum CompanySchema {
    static func register(in migrator: inout DatabaseMigrator) {
        migrator.registerMigration("v2-company") { db in
            try db.execute(
                sql: """
                    ALTER TABLE customer ADD COLUMN installed_month INTEGER;
                    -- The imported part of a meter-month, so a re-import replaces it instead of adding to it.
                    ALTER TABLE meter_month ADD COLUMN imported_kwh REAL;
                    ALTER TABLE meter_month ADD COLUMN imported_revenue REAL;
                    CREATE INDEX meter_customer ON meter(customer_id);
                    -- Partial: rows of reporting meters (NULL) never enter it, so the writer pays nothing.
                    CREATE INDEX meter_inactive ON meter(inactive_since_ms) WHERE inactive_since_ms IS NOT NULL;
                    -- Meters never heard from (imported, waiting for their first reading): they count as inactive.
                    CREATE INDEX meter_never_reported ON meter(id) WHERE last_received_ms IS NULL;
                    CREATE TABLE technician (
                        id INTEGER PRIMARY KEY,
                        name TEXT NOT NULL
                    );
                    -- Rows without an id in the CSV are keyed by their fields plus an ordinal (the n-th
                    -- identical row of the file), so importing the same file twice changes nothing.
                    CREATE TABLE installation (
                        customer_id INTEGER NOT NULL,
                        request_date TEXT NOT NULL,
                        ordinal INTEGER NOT NULL,
                        installed_date TEXT NOT NULL,
                        installed_month INTEGER NOT NULL,
                        days REAL NOT NULL,
                        technician_id INTEGER,
                        PRIMARY KEY (customer_id, request_date, ordinal)
                    );
                    CREATE TABLE maintenance (
                        customer_id INTEGER NOT NULL,
                        request_date TEXT NOT NULL,
                        technician_id INTEGER NOT NULL,
                        ordinal INTEGER NOT NULL,
                        request_month INTEGER NOT NULL,
                        resolution_date TEXT,
                        resolution_month INTEGER,
                        resolution_days REAL,
                        PRIMARY KEY (customer_id, request_date, technician_id, ordinal)
                    );
                    CREATE TABLE feedback (
                        customer_id INTEGER NOT NULL,
                        feedback_date TEXT NOT NULL,
                        ordinal INTEGER NOT NULL,
                        month INTEGER NOT NULL,
                        score INTEGER NOT NULL,
                        PRIMARY KEY (customer_id, feedback_date, ordinal)
                    );
                    CREATE TABLE bill (
                        customer_id INTEGER NOT NULL,
                        month INTEGER NOT NULL,
                        amount REAL NOT NULL,
                        paid INTEGER NOT NULL,
                        PRIMARY KEY (customer_id, month)
                    ) WITHOUT ROWID;
                    CREATE TABLE complaint (
                        id INTEGER PRIMARY KEY,
                        customer_id INTEGER NOT NULL,
                        complaint_date TEXT NOT NULL,
                        month INTEGER NOT NULL,
                        category TEXT NOT NULL,
                        resolved_date TEXT,
                        resolved_month INTEGER
                    );
                    -- Counts (and sums) of dated company events by month, region and an item (score,
                    -- technician, paid flag): the KPI engine reads these, never the event tables.
                    CREATE TABLE company_rollup (
                        kind TEXT NOT NULL,
                        month INTEGER NOT NULL,
                        region TEXT NOT NULL,
                        item INTEGER NOT NULL,
                        count INTEGER NOT NULL,
                        total REAL NOT NULL,
                        PRIMARY KEY (kind, month, region, item)
                    );
                    -- Live reading latency by the month a reading was received, in histogram buckets.
                    CREATE TABLE latency_month (
                        month INTEGER NOT NULL,
                        region TEXT NOT NULL,
                        bucket INTEGER NOT NULL,
                        count INTEGER NOT NULL,
                        sum_ms INTEGER NOT NULL,
                        PRIMARY KEY (month, region, bucket)
                    );
                    CREATE TABLE kpi_snapshot (
                        id INTEGER PRIMARY KEY,
                        generated_ms INTEGER NOT NULL,
                        period_from INTEGER NOT NULL,
                        period_to INTEGER NOT NULL,
                        document TEXT NOT NULL
                    );
                    """)
        }
    }
}

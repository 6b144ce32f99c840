/// The KPI document of SPEC.md section 5: one flat object with every key of the section, plus
/// `period`, `region` and `generated_at`.
///
/// The daemon encodes it with ``AnswerEncoder`` (keys in this order, `null` where a figure has no
/// data: an average over nothing, a percentile without readings); `meterctl` and the tests decode
/// it with `JSONDecoder`. Counts are integers, sums and averages doubles.
package struct KPIDocument: Codable, Sendable, Equatable {
    package var period: Period
    package var region: String?
    /// RFC 3339 time the document was computed at.
    package var generatedAt: String
    /// The period's month still in progress in the configured zone (`YYYY-MM`), whose figures are
    /// month-to-date; `null` when the period is over.
    package var currentMonth: String?
    // Overview
    package var totalCustomers: Int
    package var totalConsumptionKwh: Double
    package var totalRevenue: Double
    package var averageConsumptionKwh: Double?
    package var meters: MeterCounts
    // Consumption
    package var consumptionByRegion: [RegionConsumption]
    package var topConsumers: [TopConsumer]
    package var monthlyConsumption: [MonthConsumption]
    // Meters
    package var meterHealth: MeterHealthShares
    package var faultyMeters: [FaultyMeterEntry]
    package var readingLatencyMs: ReadingLatency
    package var validationFlags: ValidationFlags
    /// Share of installed meters with at least one reading per day, averaged over the period's
    /// judged days, 0–1 (``ReadSuccess``); `null` without a judged day.
    package var readSuccessRate: Double?
    package var readSuccessDaily: [DailyReadSuccess]
    package var readSuccessByRegion: [RegionReadSuccess]
    /// Received ÷ expected readings per meter per judged day, at most 1 a day, averaged over the
    /// installed meters' judged days, 0–1; `null` without any.
    package var intervalCompleteness: Double?
    /// The meters with the lowest interval completeness, lowest first.
    package var lowestCompletenessMeters: [MeterCompleteness]
    // Revenue
    package var revenueByRegion: [RegionRevenue]
    package var revenueTrend: [MonthRevenue]
    package var paymentStatus: PaymentStatus
    // Customers
    package var satisfaction: Satisfaction
    package var newVsReturning: NewVsReturning
    package var complaints: Complaints
    /// Complaints received and resolved over the whole period (`complaints` is its last month).
    package var complaintsInPeriod: Complaints
    // Operations
    package var installationTimeDays: Double?
    /// Installations whose installation date falls in the period.
    package var installationsInPeriod: Int
    package var maintenance: Maintenance
    package var technicians: [Technician]

    enum CodingKeys: String, CodingKey {
        case period, region
        case generatedAt = "generated_at"
        case currentMonth = "current_month"
        case totalCustomers = "total_customers"
        case totalConsumptionKwh = "total_consumption_kwh"
        case totalRevenue = "total_revenue"
        case averageConsumptionKwh = "average_consumption_kwh"
        case meters
        case consumptionByRegion = "consumption_by_region"
        case topConsumers = "top_consumers"
        case monthlyConsumption = "monthly_consumption"
        case meterHealth = "meter_health"
        case faultyMeters = "faulty_meters"
        case readingLatencyMs = "reading_latency_ms"
        case validationFlags = "validation_flags"
        case readSuccessRate = "read_success_rate"
        case readSuccessDaily = "read_success_daily"
        case readSuccessByRegion = "read_success_by_region"
        case intervalCompleteness = "interval_completeness"
        case lowestCompletenessMeters = "lowest_completeness_meters"
        case revenueByRegion = "revenue_by_region"
        case revenueTrend = "revenue_trend"
        case paymentStatus = "payment_status"
        case satisfaction
        case newVsReturning = "new_vs_returning"
        case complaints
        case complaintsInPeriod = "complaints_in_period"
        case installationTimeDays = "installation_time_days"
        case installationsInPeriod = "installations_in_period"
        case maintenance, technicians
    }

    /// `period`: the inclusive months, `YYYY-MM`.
    package struct Period: Codable, Sendable, Equatable {
        package var from: String
        package var to: String
    }

    /// `meters`: active and inactive right now, faulty over the period.
    package struct MeterCounts: Codable, Sendable, Equatable {
        package var active: Int
        package var inactive: Int
        package var faulty: Int
    }

    /// An entry of `consumption_by_region`.
    package struct RegionConsumption: Codable, Sendable, Equatable {
        package var region: String
        package var kwh: Double
    }

    /// An entry of `top_consumers`.
    package struct TopConsumer: Codable, Sendable, Equatable {
        package var customerID: Int64
        package var region: String
        package var kwh: Double

        enum CodingKeys: String, CodingKey {
            case customerID = "customer_id"
            case region, kwh
        }
    }

    /// An entry of `monthly_consumption`; `estimated` when part of its kWh was spread from a gap
    /// spanning more than one month (SPEC.md section 11).
    package struct MonthConsumption: Codable, Sendable, Equatable {
        package var month: String
        package var kwh: Double
        package var estimated: Bool
    }

    /// `validation_flags`: flags raised by readings of the period (by their `ts`), per rule; every
    /// rule is present, 0 when it raised none.
    package struct ValidationFlags: Codable, Sendable, Equatable {
        package var spike = 0
        package var zeroRun = 0
        package var registerReset = 0
        package var clockBackwards = 0
        package var voltage = 0

        enum CodingKeys: String, CodingKey {
            case spike
            case zeroRun = "zero_run"
            case registerReset = "register_reset"
            case clockBackwards = "clock_backwards"
            case voltage
        }

        package init(counts: [ValidationRule: Int] = [:]) {
            self.spike = counts[.spike] ?? 0
            self.zeroRun = counts[.zeroRun] ?? 0
            self.registerReset = counts[.registerReset] ?? 0
            self.clockBackwards = counts[.clockBackwards] ?? 0
            self.voltage = counts[.voltage] ?? 0
        }

        /// The count of one rule.
        package subscript(rule: ValidationRule) -> Int {
            switch rule {
            case .spike: self.spike
            case .zeroRun: self.zeroRun
            case .registerReset: self.registerReset
            case .clockBackwards: self.clockBackwards
            case .voltage: self.voltage
            }
        }
    }

    /// An entry of `read_success_daily`: a judged day (`YYYY-MM-DD`, the configured zone's) and its
    /// rate, `null` when no meter was installed that day. Today's is so far.
    package struct DailyReadSuccess: Codable, Sendable, Equatable {
        package var date: String
        package var rate: Double?
    }

    /// An entry of `read_success_by_region`: the mean of the region's daily rates.
    package struct RegionReadSuccess: Codable, Sendable, Equatable {
        package var region: String
        package var rate: Double?
    }

    /// An entry of `lowest_completeness_meters`.
    package struct MeterCompleteness: Codable, Sendable, Equatable {
        package var meter: String
        package var customerID: Int64?
        package var region: String
        package var completeness: Double
        package var readings: Int
        package var expectedReadings: Double
        /// The interval the expectation assumed: configured, or observed (``ReadSuccess``).
        package var intervalSeconds: Double

        enum CodingKeys: String, CodingKey {
            case meter
            case customerID = "customer_id"
            case region, completeness, readings
            case expectedReadings = "expected_readings"
            case intervalSeconds = "interval_s"
        }
    }

    /// `meter_health`: shares of customer-months in percent; `null` without any.
    package struct MeterHealthShares: Codable, Sendable, Equatable {
        package var good: Double?
        package var fair: Double?
        package var poor: Double?
    }

    /// An entry of `faulty_meters`.
    package struct FaultyMeterEntry: Codable, Sendable, Equatable {
        package var meter: String
        package var customerID: Int64?
        package var poorMonths: Int
        package var faults: Int

        enum CodingKeys: String, CodingKey {
            case meter
            case customerID = "customer_id"
            case poorMonths = "poor_months"
            case faults
        }
    }

    /// `reading_latency_ms`: over live readings received in the period; `null`s without any.
    package struct ReadingLatency: Codable, Sendable, Equatable {
        package var avg: Double?
        package var p50: Double?
        package var p95: Double?
        package var p99: Double?
        package var count: Int
    }

    /// An entry of `revenue_by_region`.
    package struct RegionRevenue: Codable, Sendable, Equatable {
        package var region: String
        package var revenue: Double
    }

    /// An entry of `revenue_trend`.
    package struct MonthRevenue: Codable, Sendable, Equatable {
        package var month: String
        package var revenue: Double
    }

    /// `payment_status`: bills of the period.
    package struct PaymentStatus: Codable, Sendable, Equatable {
        package var paid: Bills
        package var unpaid: Bills
    }

    /// Bills of one payment status.
    package struct Bills: Codable, Sendable, Equatable {
        package var count: Int
        package var amount: Double
    }

    /// `satisfaction`: feedback scores of the period.
    package struct Satisfaction: Codable, Sendable, Equatable {
        package var average: Double?
        package var count: Int
        package var distribution: ScoreDistribution
    }

    /// How many feedback rows gave each score, keyed `"1"`…`"5"`.
    package struct ScoreDistribution: Codable, Sendable, Equatable {
        package var one: Int
        package var two: Int
        package var three: Int
        package var four: Int
        package var five: Int

        /// Counts for scores 1 to 5, in that order.
        package init(counts: [Int]) {
            precondition(counts.count == 5, "five scores")
            (self.one, self.two, self.three, self.four, self.five) = (counts[0], counts[1], counts[2], counts[3], counts[4])
        }

        /// The count of `score` (1…5).
        package subscript(score score: Int) -> Int {
            [self.one, self.two, self.three, self.four, self.five][score - 1]
        }

        enum CodingKeys: String, CodingKey {
            case one = "1"
            case two = "2"
            case three = "3"
            case four = "4"
            case five = "5"
        }
    }

    /// `new_vs_returning`.
    package struct NewVsReturning: Codable, Sendable, Equatable {
        package var new: Int
        package var returning: Int
    }

    /// `complaints`: received and resolved in the period's last month.
    package struct Complaints: Codable, Sendable, Equatable {
        package var received: Int
        package var resolved: Int
    }

    /// `maintenance`.
    package struct Maintenance: Codable, Sendable, Equatable {
        package var received: Int
        package var processed: Int
        package var open: Int
        package var averageResolutionDays: Double?

        enum CodingKeys: String, CodingKey {
            case received, processed, open
            case averageResolutionDays = "average_resolution_days"
        }
    }

    /// An entry of `technicians`.
    package struct Technician: Codable, Sendable, Equatable {
        package var technicianID: Int
        package var name: String?
        package var installations: Int
        package var maintenanceJobs: Int
        package var averageResolutionDays: Double?

        enum CodingKeys: String, CodingKey {
            case technicianID = "technician_id"
            case name, installations
            case maintenanceJobs = "maintenance_jobs"
            case averageResolutionDays = "average_resolution_days"
        }
    }
}

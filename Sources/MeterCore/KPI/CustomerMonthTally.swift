/// One month's records of the customers whose meters have one, pooled per customer (SPEC.md's
/// customer-months): a customer's meters make one record a month, whose status follows the rule
/// for a meter's month over all their readings (the imported row's, else what the readings said
/// most often, ties going to the worse), as the customer's monthly history shows it. Arrays by
/// customer index, so a month over 100,000 meters stays a tight loop; only the touched customers
/// are visited and reset.
struct CustomerMonthTally {
    private var touched: [Int] = []
    private var open: [Bool]
    private var readings: [Int32]
    private var good: [Int32]
    private var fair: [Int32]
    private var poor: [Int32]
    private var imported: [Int8]

    /// For customer indexes `0..<customers`.
    init(customers: Int) {
        self.open = Array(repeating: false, count: customers)
        self.readings = Array(repeating: 0, count: customers)
        self.good = Array(repeating: 0, count: customers)
        self.fair = Array(repeating: 0, count: customers)
        self.poor = Array(repeating: 0, count: customers)
        self.imported = Array(repeating: -1, count: customers)
    }

    /// Adds meter `index`'s record of the month in `column` to `customer`'s.
    mutating func add(customer: Int, _ column: MonthlyStore.Column, _ index: Int) {
        if !self.open[customer] {
            self.open[customer] = true
            self.touched.append(customer)
        }
        self.readings[customer] += column.readings[index]
        self.good[customer] += column.good[index]
        self.fair[customer] += column.fair[index]
        self.poor[customer] += column.poor[index]
        // The company's row is per customer; should two meters carry one, the worse stands.
        self.imported[customer] = max(self.imported[customer], column.imported[index])
    }

    /// Hands over each touched customer with its status for the month (-1 for none: only energy a
    /// gap spread into it), in the order they were first added, then starts afresh.
    mutating func close(_ record: (_ customer: Int, _ status: Int) -> Void) {
        for customer in self.touched {
            record(
                customer,
                MeterRules.monthStatusCode(
                    imported: self.imported[customer], readings: self.readings[customer], good: self.good[customer],
                    fair: self.fair[customer], poor: self.poor[customer]))
            self.open[customer] = false
            self.readings[customer] = 0
            self.good[customer] = 0
            self.fair[customer] = 0
            self.poor[customer] = 0
            self.imported[customer] = -1
        }
        self.touched.removeAll(keepingCapacity: true)
    }
}

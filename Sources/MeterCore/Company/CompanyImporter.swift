import Foundation

/// Where an import stands, for a progress display.
package struct ImportProgress: Sendable {
    package var file: String
    package var rows: Int
    /// Share of the file read, 0...1.
    package var fraction: Double
}

/// What importing one file did.
package struct FileImportResult: Sendable {
    package var file: String
    /// Rows applied (0 when the file was rejected).
    package var rows: Int
    /// Why the file was rejected, first problems first; empty when it was applied.
    package var errors: [CompanyDataError]
    package var seconds: Double

    package var succeeded: Bool { self.errors.isEmpty }
}

/// What importing a directory did, file by file.
package struct ImportReport: Sendable {
    package var files: [FileImportResult] = []

    package var succeeded: Bool { self.files.allSatisfy(\.succeeded) }

    /// One line per file, then one per problem (`file:line: reason`).
    package var text: String {
        guard !self.files.isEmpty else { return "no company files found (expected one of \(CompanyImporter.fileOrder.joined(separator: ", ")))\n" }
        var out = ""
        for file in self.files {
            if file.succeeded {
                out += "\(file.file): \(file.rows) rows imported in \(String(format: "%.2f", file.seconds)) s\n"
            } else {
                out += "\(file.file): rejected, nothing of it applied\n"
                for error in file.errors { out += "  \(error)\n" }
            }
        }
        return out
    }
}

/// Loads the company's CSV files (SPEC.md section 4) into the database.
///
/// Each file is one transaction: a bad row rejects the whole file (reported as `file:line: reason`)
/// and leaves the database as it was. Importing the same files again changes nothing: rows are
/// keyed by their ids, or, where the file has none, by their fields plus the n-th occurrence.
/// Imported monthly rows land in `meter_month`, the same aggregates live readings feed.
package enum CompanyImporter {
    /// The order files are applied in: what others refer to comes first.
    package static let fileOrder = [
        "technicians.csv", "customer_data.csv", "meters.csv", "installations.csv", "monthly_data.csv",
        "bills.csv", "maintenance_data.csv", "feedback_data.csv", "complaints.csv", "concentrators.csv",
    ]

    /// Most problems reported for one file before giving up on it.
    static let maximumErrors = 10

    /// Imports every known file found in `directory` with a writer no pipeline runs (offline, tests).
    package static func importDirectory(
        _ directory: String, into writer: any MeterStoreWriter,
        progress: (@Sendable (ImportProgress) -> Void)? = nil
    ) throws -> ImportReport {
        var report = ImportReport()
        for path in try self.files(in: directory) {
            report.files.append(self.importFile(path, into: writer, progress: progress))
        }
        return report
    }

    /// Imports through the store's single writer one file at a time, so live readings are committed
    /// between two files rather than waiting for the whole directory.
    package static func importDirectory(
        _ directory: String, through writer: WriterAccess,
        progress: (@Sendable (ImportProgress) -> Void)? = nil
    ) async throws -> ImportReport {
        var report = ImportReport()
        // A large file keeps the writer for many seconds: its progress is the writer's progress.
        let reported: @Sendable (ImportProgress) -> Void = { step in
            writer.reportProgress()
            progress?(step)
        }
        for path in try self.files(in: directory) {
            report.files.append(try await writer.perform { writer in self.importFile(path, into: writer, progress: reported) })
        }
        return report
    }

    /// Imports one file by its name (which says what it holds) in one transaction. The writer's
    /// meters are reloaded and its commit listener told, so a reading for a just-imported meter finds it.
    package static func importFile(
        _ path: String, into writer: any MeterStoreWriter,
        progress: (@Sendable (ImportProgress) -> Void)? = nil
    ) -> FileImportResult {
        var result = writer.importCompanyFile(path, progress: progress)
        do {
            try writer.reloadMeters()
        } catch {
            result.errors.append(CompanyDataError(file: result.file, line: 0, "imported, but the meters could not be reloaded: \(error)"))
        }
        writer.commitListener?.companyDataChanged()
        return result
    }

    /// The known files present in `directory`, in import order.
    static func files(in directory: String) throws -> [String] {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw CompanyDataError(file: directory, line: 0, "no such directory")
        }
        return self.fileOrder.map { (directory as NSString).appendingPathComponent($0) }.filter { FileManager.default.fileExists(atPath: $0) }
    }
}

/// The default meter of a customer: `MTR-%06d` of its id.
package func defaultMeterName(customer: Int64) -> String {
    let digits = String(customer)
    return "MTR-" + String(repeating: "0", count: max(0, 6 - digits.count)) + digits
}

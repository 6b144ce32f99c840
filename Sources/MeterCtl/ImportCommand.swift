import ArgumentParser
import Foundation
import Synchronization
import MeterCore

#if canImport(Glibc)
import Glibc
#endif

/// `meterctl import DIR --db PATH`: loads the company's CSV files (SPEC.md section 4).
struct ImportCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import",
        abstract: "Import the company's CSV files found in DIR.",
        discussion: """
            Files (each optional): \(CompanyImporter.fileOrder.joined(separator: ", ")). Each file is one \
            transaction: a bad row is reported as file:line: reason and nothing of that file is applied. \
            Importing the same files again changes nothing.
            """)

    @Argument(help: "Directory holding the CSV files.")
    var directory: String

    @Option(help: "Import straight into this database file (meterd must not be running on it).")
    var db: String?

    @Option(help: ArgumentHelp("Import straight into this store: sqlite:PATH or postgresql://USER@HOST/DB.", valueName: "url"))
    var store: String?

    @OptionGroup var options: ConnectionOptions

    func run() async throws {
        guard self.db != nil || self.store != nil else {
            try await self.importThroughDaemon()
            return
        }
        // A new SQLite file is created for the import, so only a URL's store must exist already.
        let store: any MeterStore
        if let path = self.db, self.store == nil {
            store = try SQLiteMeterStore(path: path)
        } else {
            store = try KPIOptions.openStore(db: self.db, store: self.store)
        }
        let writer = try store.makeWriter(WriterSettings())
        let terminal = isatty(STDERR_FILENO) == 1
        // Off a terminal, a line per tenth of a file is enough (progress comes every 65,536 rows).
        let shown = Mutex<(file: String, tenth: Int)>(("", -1))
        let report = try CompanyImporter.importDirectory(self.directory, into: writer) { progress in
            let percent = Int((progress.fraction * 100).rounded())
            let tenth = percent / 10
            let fresh = shown.withLock { shown in
                defer { shown = (progress.file, tenth) }
                return shown.file != progress.file || shown.tenth != tenth
            }
            guard terminal || fresh else { return }
            let line = ImportProgressAnswer.Progress(file: progress.file, rows: progress.rows, fraction: progress.fraction).line
            FileHandle.standardError.write(Data((terminal ? "\r\(line)\u{1B}[K" + (percent >= 100 ? "\n" : "") : line + "\n").utf8))
        }
        print(report.text, terminator: "")
        if !report.succeeded || report.files.isEmpty { throw ExitCode(1) }
    }

    /// Hands the directory to the running meterd, the single writer; it reads the files itself.
    /// While it works, a second connection asks for `progress` and shows it as the offline import does.
    private func importThroughDaemon() async throws {
        let directory = URL(fileURLWithPath: self.directory).standardizedFileURL.path
        let path = self.options.path
        let importing = Task.detached { () -> Result<String, StatusClientError> in
            do throws(StatusClientError) {
                return .success(try StatusClient(path: path, timeoutSeconds: 3600).send("import \(directory)"))
            } catch {
                return .failure(error)
            }
        }
        let terminal = isatty(STDERR_FILENO) == 1
        let watcher = Task.detached {
            var shown = ""
            while !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(500))
                guard !Task.isCancelled, let line = try? StatusClient(path: path, timeoutSeconds: 5).send("progress"),
                    let answer = try? JSONDecoder().decode(ImportProgressAnswer.self, from: Data(line.utf8)),
                    let progress = answer.import
                else { continue }
                let text = progress.line
                guard text != shown else { continue }
                shown = text
                FileHandle.standardError.write(Data((terminal ? "\r\(text)\u{1B}[K" : text + "\n").utf8))
            }
            if terminal, !shown.isEmpty { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) }
        }
        let result = await importing.value
        watcher.cancel()
        _ = await watcher.value
        let line: String
        switch result {
        case .success(let answer): line = answer
        case .failure(let error): ConnectionOptions.fail("\(error)", code: 3)
        }
        guard let answer = OperatorAnswer<ImportAnswer>(line: line) else {
            ConnectionOptions.fail("meterd sent an answer that is not the JSON expected: \(line.prefix(200))", code: 1)
        }
        switch answer {
        case .error(let code, let detail):
            if self.options.json { print(line) }
            ConnectionOptions.fail(detail.isEmpty ? code : detail, code: 1)
        case .value(let report):
            if self.options.json {
                print(line)
            } else {
                print(Self.render(report, directory: directory), terminator: "")
            }
            // Exit non-zero when a file was rejected, as the offline import does.
            if report.files.contains(where: { !$0.succeeded }) || report.files.isEmpty { throw ExitCode(1) }
        }
    }

    private static func render(_ report: ImportAnswer, directory: String) -> String {
        var out = report.files.isEmpty ? "no company files found in \(directory)\n" : ""
        for file in report.files {
            if file.succeeded {
                out += "\(file.file): \(file.rows) rows imported\n"
            } else {
                out += "\(file.file): rejected, nothing of it applied\n" + file.errors.map { "  \($0)\n" }.joined()
            }
        }
        return out
    }
}

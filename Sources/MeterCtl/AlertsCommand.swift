import ArgumentParser
import Foundation
import MeterCore

extension AlertFilter: ExpressibleByArgument {}

extension MeterCtl {
    /// `meterctl alerts`: asks meterd, or reads the alerts from the database file when it does not run.
    struct Alerts: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Alerts: firing ones first (oldest first), then resolved ones (newest first).",
            discussion: """
                Asks the running meterd through its status socket (so it works on any store), or with \
                --db reads a database file directly. When no socket is named (--socket or \
                $METERD_STATUS_SOCKET) and the default one does not answer, it reads the database file: \
                $METERD_DATABASE, else /var/lib/meterd/meterd.sqlite when it exists, else \
                ./meterd-data/meterd.sqlite.
                """)
        @Option(help: "Which alerts: firing, resolved or all.")
        var state: AlertFilter = .all
        @Option(help: "List at most this many alerts.")
        var limit: Int = StatusCommand.defaultAlertLimit
        @Option(help: "Read this database file instead of asking meterd.")
        var db: String?
        @OptionGroup var options: ConnectionOptions

        func validate() throws {
            guard (1...1_000_000).contains(self.limit) else { throw ValidationError("Please give a limit from 1 to 1000000.") }
        }

        var databasePath: String {
            if let db = self.db { return db }
            if let path = ProcessInfo.processInfo.environment["METERD_DATABASE"], !path.isEmpty { return path }
            let systemd = "/var/lib/meterd/meterd.sqlite"
            return FileManager.default.fileExists(atPath: systemd) ? systemd : "./meterd-data/meterd.sqlite"
        }

        func run() async throws {
            let render = { (answer: AlertListAnswer) in OperatorOutput.alerts(answer, filter: self.state) }
            if self.db == nil {
                let named = self.options.socket != nil || !(ProcessInfo.processInfo.environment["METERD_STATUS_SOCKET"] ?? "").isEmpty
                if named || FileManager.default.fileExists(atPath: self.options.path) {
                    do {
                        let line = try StatusClient(path: self.options.path).send("alerts \(self.state.rawValue) \(self.limit)")
                        self.options.present(line, as: AlertListAnswer.self, render: render)
                        return
                    } catch  where !named {
                        // A socket left by a stopped meterd: its database still holds the alerts.
                    } catch {
                        ConnectionOptions.fail("\(error)", code: 3)
                    }
                }
            }
            let path = self.databasePath
            guard FileManager.default.fileExists(atPath: path) else { ConnectionOptions.fail("no database at \(path)", code: 1) }
            let answer: AlertListAnswer
            do {
                let store = try SQLiteMeterStore(path: path)
                let (alerts, firing) = try await store.alerts(state: self.state.state, limit: self.limit)
                answer = AlertListAnswer(firing: firing, alerts: alerts.map(\.answer))
            } catch {
                ConnectionOptions.fail("\(error)", code: 1)
            }
            print(self.options.json ? try AnswerEncoder.json(answer) : render(answer), terminator: self.options.json ? "\n" : "")
        }
    }
}

import Foundation
import Hummingbird
import HTTPTypes
import NIOCore

/// What the dashboard page is made of: its HTML, CSS and JavaScript (the files in `Assets/`, which
/// SwiftPM embeds into meterd as byte arrays: no build step, nothing to install beside the binary),
/// and Chart.js, read from the configured file (Debian's libjs-chart.js by default). Without that
/// file the page leaves out the charts and shows every figure as a table.
package struct DashboardAssets: Sendable {
    package var chartJSPath: String

    package init(chartJSPath: String = DaemonConfiguration().dashboardChartJS) {
        self.chartJSPath = chartJSPath
    }

    /// Whether Chart.js can be served right now (checked per page load, so installing the package
    /// later needs no restart).
    package var chartJSAvailable: Bool { FileManager.default.isReadableFile(atPath: self.chartJSPath) }

    /// The page, with the Chart.js script tag only when the file is there.
    package func page() -> Response {
        let script = self.chartJSAvailable ? #"<script src="/assets/chart.js"></script>"# : "<!-- Chart.js not installed: tables only -->"
        let html = DashboardPage.html.replacingOccurrences(of: "<!--CHART_JS-->", with: script)
        return Self.text(html, type: "text/html; charset=utf-8")
    }

    /// Chart.js itself, or a 404 that says how to get it.
    package func chartJS() throws -> Response {
        guard let data = FileManager.default.contents(atPath: self.chartJSPath) else {
            throw DashboardError.notFound("Chart.js is not at \(self.chartJSPath) (apt-get install libjs-chart.js, or set dashboard_chartjs).")
        }
        return Response(
            status: .ok, headers: [.contentType: "text/javascript; charset=utf-8", .cacheControl: "max-age=3600"],
            body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }

    static func text(_ text: String, type: String) -> Response {
        Response(status: .ok, headers: [.contentType: type, .cacheControl: "no-cache"], body: .init(byteBuffer: ByteBuffer(string: text)))
    }

    /// An embedded asset as text, less the newline that ends the file: the bytes served are the
    /// same as when the assets were string literals.
    static func text(ofAsset bytes: [UInt8]) -> String {
        String(decoding: bytes.last == UInt8(ascii: "\n") ? bytes.dropLast() : bytes[...], as: UTF8.self)
    }
}

/// The dashboard's HTML (`Assets/dashboard.html`): the six sections of the use case, the filters and
/// the drill-down view. `dashboard.js` fills it from the JSON API; `<!--CHART_JS-->` becomes
/// Chart.js's script tag when the file is installed.
enum DashboardPage {
    static let html = DashboardAssets.text(ofAsset: PackageResources.dashboard_html)
}

/// The dashboard's JavaScript (`Assets/dashboard.js`): plain ES2020, no build step, no library but
/// Chart.js (optional).
///
/// State lives in the URL (`?from=&to=&region=&view=&customer=&meter=&sort=&order=&page=`), so a
/// view can be shared; `?animations=0` turns chart animations off and `?refresh=N` sets the live
/// refresh interval in seconds (default 5). `scripts/test.sh` checks its syntax with `node --check`.
enum DashboardScript {
    static let source = DashboardAssets.text(ofAsset: PackageResources.dashboard_js)
}

/// The dashboard's stylesheet (`Assets/dashboard.css`): a card and panel grid that folds to one
/// column on a phone.
enum DashboardStyle {
    static let source = DashboardAssets.text(ofAsset: PackageResources.dashboard_css)
}

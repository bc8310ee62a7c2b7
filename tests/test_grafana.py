"""The Grafana dashboard and its provisioning: every query names a measurement, field and tag that exist.

Pure checks on ``deploy/grafana/``: no Grafana, no InfluxDB. The names come from the project:
device fields are the signal names of the profile of the measurement's device kind, gateway
fields and tags are what ``Gateway.stats_message`` and the publisher really emit, control fields
are the supervisor's status keys (read from ``gateway/control/`` without running it).
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config.loader import load_profile, load_site
from gateway.publish.spool import Spool
from gateway.service import Gateway

REPO = Path(__file__).resolve().parent.parent
GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA / "heat-gateway.json"
DATASOURCE_FILE = GRAFANA / "provisioning" / "datasources" / "heat-gateway.yaml"
PROVIDER_FILE = GRAFANA / "provisioning" / "dashboards" / "heat-gateway.yaml"
GRAFANA_README = GRAFANA / "README.md"
EXAMPLE_SITE = REPO / "config" / "site.example.yaml"
CONTROL_PACKAGE = REPO / "gateway" / "control"
INSTALL_ROOT = "/opt/heat-gateway"  # deploy/README.md unpacks the release here

#: measurement (the device kind) -> profile in config/profiles/
PROFILE_OF_KIND = {"cdu": "cdu", "heat_meter": "heat-meter", "heat_pump_plc": "hp-plc", "panel_pc": "panel-pc"}
GATEWAY = "gateway"
CONTROL = "control"
ROWS = ["Site overview", "CDUs", "Heat recovery station", "Gateway health", "Supervisory control"]

# Limits of the reference site (docs/control.md) and the control design; test_limits_agree_with_the_profiles keeps
# the first three in step with the write limits the profiles give the same quantities.
IT_LIMIT_C = 45.0  # TCS supply, ASHRAE W45
FWS_LIMIT_C = 38.0  # facility water supply
DH_MAX_SUPPLY_C = 85.0  # DH over-temperature
VALVE_SATURATED_PCT = 95.0  # a CDU valve this open cannot cool more
LATENESS_P99_LIMIT_S = 0.020
LIMITS = {
    ("cdu", "tcs_supply_temp_c"): IT_LIMIT_C,
    ("cdu", "tcs_supply_temp_2_c"): IT_LIMIT_C,
    ("cdu", "tcs_supply_setpoint_c"): IT_LIMIT_C,
    ("panel_pc", "max_tcs_supply_temp_c"): IT_LIMIT_C,
    (CONTROL, "tcs_hottest_c"): IT_LIMIT_C,
    ("heat_pump_plc", "fws_supply_temp_c"): FWS_LIMIT_C,
    ("panel_pc", "fws_supply_temp_c"): FWS_LIMIT_C,
    (CONTROL, "fws_supply_c"): FWS_LIMIT_C,
    ("heat_meter", "flow_temp_c"): DH_MAX_SUPPLY_C,
    ("heat_pump_plc", "dh_supply_temp_c"): DH_MAX_SUPPLY_C,
    ("panel_pc", "dh_supply_temp_c"): DH_MAX_SUPPLY_C,
    (CONTROL, "dh_supply_c"): DH_MAX_SUPPLY_C,
    ("cdu", "valve_feedback_pct"): VALVE_SATURATED_PCT,
    (GATEWAY, "lateness_p99_s"): LATENESS_P99_LIMIT_S,
}
#: limits a dashboard must show somewhere (the control row's are optional until it publishes)
REQUIRED_LIMITS = {
    ("cdu", "tcs_supply_temp_c"),
    ("heat_pump_plc", "fws_supply_temp_c"),
    ("heat_meter", "flow_temp_c"),
    ("cdu", "valve_feedback_pct"),
    (GATEWAY, "lateness_p99_s"),
}

MW = "suffix:MW"
#: Grafana unit ids this dashboard may use (packages/grafana-data/src/valueFormats/categories.ts)
GRAFANA_UNITS = {"celsius", "kelvin", "kwatt", "percent", "s", "pressurebar", "flowlpm", "none", "cpm"}
#: signal-name unit suffix -> units a panel may show it in
UNITS_OF_SUFFIX = {
    "_c": {"celsius"},
    "_k": {"kelvin"},
    "_kw": {"kwatt", MW},
    "_mw": {MW},
    "_pct": {"percent"},
    "_s": {"s"},
    "_bar": {"pressurebar"},
    "_lpm": {"flowlpm"},
    "_m3h": {"suffix:m³/h"},
}
DATASOURCE_REF = {"type": "influxdb", "uid": "${datasource}"}

_PREDICATE = re.compile(r'\br\.(?P<column>\w+)\s*(?P<op>==|!=|=~|!~)\s*(?:"(?P<text>[^"]*)"|/(?P<regex>[^/\n]*)/)')
_VARIABLE_USE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
_TAG_QUERY = re.compile(r'tag:\s*"(\w+)"')


@dataclass(frozen=True)
class Query:
    """One Flux target of one panel, with the names its filters use."""

    panel: dict[str, Any]
    ref: str
    text: str
    measurements: tuple[str, ...]
    fields: tuple[str, ...]
    field_patterns: tuple[str, ...]
    tag_columns: tuple[str, ...]

    @property
    def where(self) -> str:
        return f"panel {self.panel['id']} {self.panel['title']!r} query {self.ref}"

    @property
    def measurement(self) -> str:
        return self.measurements[0]


def parse_query(panel: dict[str, Any], target: dict[str, Any]) -> Query:
    measurements: list[str] = []
    fields: list[str] = []
    patterns: list[str] = []
    tags: list[str] = []
    text = target["query"]
    for match in _PREDICATE.finditer(text):
        column, op = match["column"], match["op"]
        if column == "_measurement" and op == "==":
            measurements.append(match["text"])
        elif column == "_field" and op == "==":
            fields.append(match["text"])
        elif column == "_field" and op == "=~":
            patterns.append(match["regex"])
        elif not column.startswith("_"):
            tags.append(column)
    return Query(panel, target["refId"], text, tuple(measurements), tuple(fields), tuple(patterns), tuple(tags))


def parse_line(line: str) -> tuple[str, dict[str, str], set[str]]:
    """``measurement,tag=v,... field=v,... ts`` -> (measurement, tags, field names); names need no escaping here."""
    series, fields, _timestamp = line.split(" ")
    measurement, *tags = series.split(",")
    return measurement, dict(tag.split("=", 1) for tag in tags), {f.split("=", 1)[0] for f in fields.split(",")}


def control_status_fields() -> set[str]:
    """Keys the supervisor (and the live loop) put in the status (``status = {...}``,
    ``status.update({...})``, ``status["key"] = ...``).

    A module-level ``STATUS_FIELDS`` constant in gateway/control wins if one is ever added.
    """
    keys: set[str] = set()
    # the live loop adds the meter/station cross-check's keys (gateway/control_loop.py)
    for path in [*sorted(CONTROL_PACKAGE.glob("*.py")), CONTROL_PACKAGE.parent / "control_loop.py"]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, ast.Name) and t.id == "STATUS_FIELDS" for t in targets) and node.value:
                    return set(ast.literal_eval(node.value))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "update"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "status"
            ):
                for arg in node.args:
                    if isinstance(arg, ast.Dict):
                        keys.update(
                            k.value for k in arg.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)
                        )
            elif (
                isinstance(node, (ast.Assign, ast.AnnAssign))
                and isinstance(node.value, ast.Dict)
                and any(
                    isinstance(t, ast.Name) and t.id == "status"
                    for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
                )
            ):
                keys.update(
                    k.value for k in node.value.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)
                )
            elif (
                isinstance(node, ast.Subscript)
                and isinstance(node.ctx, ast.Store)
                and isinstance(node.value, ast.Name)
                and node.value.id == "status"
                and isinstance(node.slice, ast.Constant)
                and isinstance(node.slice.value, str)
            ):
                keys.add(node.slice.value)
    return keys


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows included, with the children of collapsed rows."""
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


@pytest.fixture(scope="module")
def visual_panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [p for p in panels if p["type"] != "row"]


@pytest.fixture(scope="module")
def queries(visual_panels: list[dict[str, Any]]) -> list[Query]:
    return [parse_query(panel, target) for panel in visual_panels for target in panel.get("targets", [])]


@pytest.fixture(scope="module")
def variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


@pytest.fixture(scope="module")
def signals() -> dict[str, set[str]]:
    """Device kind -> signal names of its profile (loaded and validated by the gateway's own loader)."""
    profiles = REPO / "config" / "profiles"
    return {kind: set(load_profile(profiles / f"{name}.yaml").signals) for kind, name in PROFILE_OF_KIND.items()}


@pytest.fixture(scope="module")
def emitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[set[str], set[str]]:
    """(gateway fields, tag keys) from the lines a gateway built from the example site really emits."""
    gateway = Gateway(load_site(EXAMPLE_SITE))
    # The publisher opens its spool at start(); open one in a temporary folder instead, so the
    # spool's figures are among the emitted fields as they are in a running gateway.
    gateway.publisher.spool = Spool(tmp_path_factory.mktemp("spool"), max_bytes=2**20)
    fields: set[str] = set()
    tags: set[str] = set()
    for line in gateway.stats_message().payload.decode().splitlines():
        measurement, line_tags, line_fields = parse_line(line)
        assert measurement == GATEWAY
        fields |= line_fields
        tags |= set(line_tags)
    for prefix in gateway.publisher.encoder.prefixes.values():  # the device lines' measurement and tags
        _measurement, *pairs = prefix.split(",")
        tags |= {pair.split("=", 1)[0] for pair in pairs}
    return fields, tags


# -- the dashboard's shape ------------------------------------------------------------------------


def test_dashboard_is_a_grafana_10_dashboard_with_the_five_rows(dashboard: dict[str, Any]) -> None:
    assert 36 <= dashboard["schemaVersion"] <= 41, "Grafana 10/11 dashboards have schemaVersion 36-41"
    assert dashboard["uid"] == "heat-gateway"
    assert dashboard["title"]
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == ROWS


def test_every_panel_has_a_title_datasource_unit_and_description(visual_panels: list[dict[str, Any]]) -> None:
    assert len(visual_panels) >= 30
    for panel in visual_panels:
        where = f"panel {panel.get('id')} {panel.get('title')!r}"
        assert panel.get("title"), where
        assert panel.get("description"), f"{where}: the (i) tooltip is the operator's first help"
        assert panel.get("datasource") == DATASOURCE_REF, where
        assert panel.get("targets"), f"{where} has no query"
        for target in panel["targets"]:
            assert target.get("datasource", DATASOURCE_REF) == DATASOURCE_REF, where
            assert target.get("query"), where
        units = [panel["fieldConfig"]["defaults"].get("unit")]
        units += [
            prop["value"]
            for override in panel["fieldConfig"].get("overrides", [])
            for prop in override["properties"]
            if prop["id"] == "unit"
        ]
        for unit in units:
            assert unit in GRAFANA_UNITS or (isinstance(unit, str) and re.fullmatch(r"suffix:\S+", unit)), (
                f"{where}: unit {unit!r} is neither a Grafana unit id this dashboard uses nor suffix:..."
            )


def test_panel_ids_are_unique(panels: list[dict[str, Any]]) -> None:
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


def test_grid_positions_fit_and_do_not_overlap(dashboard: dict[str, Any]) -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["w"] > 0, panel["title"]
        assert grid["h"] > 0, panel["title"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, f"{panel['title']!r} runs past the 24 columns"
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[x, y]!r} at x={x} y={y}"
                cells[x, y] = panel["title"]


def test_panels_sit_under_their_row(dashboard: dict[str, Any]) -> None:
    """Panels are listed row by row and each lies below its row header (Grafana groups by position)."""
    row_y = -1
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            assert panel["gridPos"]["y"] > row_y
            row_y = panel["gridPos"]["y"]
        else:
            assert panel["gridPos"]["y"] > row_y, panel["title"]


# -- the queries ----------------------------------------------------------------------------------


def test_every_query_reads_one_measurement_and_named_fields_in_the_time_range(queries: list[Query]) -> None:
    assert queries
    for query in queries:
        assert len(query.measurements) == 1, f"{query.where}: filter exactly one _measurement with =="
        assert query.fields or query.field_patterns, f"{query.where}: filter the fields it needs"
        assert query.text.startswith("from(bucket: v.defaultBucket)"), query.where
        assert "range(start: v.timeRangeStart, stop: v.timeRangeStop)" in query.text, query.where
        assert "r.site =~ /^${site:regex}$/" in query.text, f"{query.where}: follow the site variable"
        if query.panel["type"] != "stat":
            assert "aggregateWindow(every: v.windowPeriod" in query.text, (
                f"{query.where}: aggregate to the window, or a 30-day range pulls every 1 s reading"
            )


def test_measurements_are_device_kinds_gateway_or_control(queries: list[Query]) -> None:
    used = {q.measurement for q in queries}
    assert used <= {*PROFILE_OF_KIND, GATEWAY, CONTROL}, used
    assert {*PROFILE_OF_KIND, GATEWAY} <= used, "every device kind and the gateway have panels"


def test_kinds_map_to_the_profiles_the_example_site_uses() -> None:
    site = load_site(EXAMPLE_SITE)
    used = {(device.kind, device.profile) for device in site.config.devices}
    assert used
    for kind, profile in used:
        assert PROFILE_OF_KIND.get(kind) == profile, f"example site: kind {kind} uses profile {profile}"


def test_device_queries_name_signals_of_their_kinds_profile(queries: list[Query], signals: dict[str, set[str]]) -> None:
    checked = 0
    for query in queries:
        known = signals.get(query.measurement)
        if known is None:
            continue
        for field in query.fields:
            assert field in known, f"{query.where}: {query.measurement} has no signal {field!r}"
            checked += 1
        for pattern in query.field_patterns:
            assert any(re.search(pattern, name) for name in known), (
                f"{query.where}: /{pattern}/ matches no {query.measurement} signal"
            )
            checked += 1
    assert checked >= 40


def test_gateway_queries_name_fields_the_gateway_emits(
    queries: list[Query], emitted: tuple[set[str], set[str]]
) -> None:
    gateway_fields, _tags = emitted
    assert {"available", "lateness_p99_s", "outbox_dropped", "mqtt_pending"} <= gateway_fields
    used = set()
    for query in queries:
        if query.measurement != GATEWAY:
            continue
        assert not query.field_patterns, f"{query.where}: name gateway fields one by one"
        for field in query.fields:
            assert field in gateway_fields, f"{query.where}: the gateway emits no field {field!r}"
        used |= set(query.fields)
    assert {"available", "lateness_p99_s", "failures", "overruns", "outbox_dropped", "mqtt_pending"} <= used


def test_control_queries_name_the_supervisors_status_keys(queries: list[Query]) -> None:
    status = control_status_fields()
    if not status:
        pytest.skip(
            "gateway/control has no supervisor status keys yet (no status.update({...}) in gateway/control/*.py): "
            "the Supervisory control row's field names are unchecked"
        )
    control_queries = [q for q in queries if q.measurement == CONTROL]
    assert control_queries, "the Supervisory control row has no query"
    for query in control_queries:
        assert not query.field_patterns, f"{query.where}: name control fields one by one"
        for field in query.fields:
            assert field in status, f"{query.where}: the supervisor's status has no key {field!r}"


def test_queries_filter_only_tags_the_gateway_writes(queries: list[Query], emitted: tuple[set[str], set[str]]) -> None:
    _fields, tags = emitted
    assert tags == {"site", "device"}
    for query in queries:
        assert set(query.tag_columns) <= tags, f"{query.where}: filters on {set(query.tag_columns) - tags}"


def test_units_match_the_signal_names(queries: list[Query], signals: dict[str, set[str]]) -> None:
    """A `_c` signal shows in celsius, `_kw` in kW (or MW after / 1000), and so on."""
    checked = 0
    for query in queries:
        config = query.panel["fieldConfig"]
        unit = config["defaults"]["unit"]
        for override in config.get("overrides", []):
            if override["matcher"] == {"id": "byFrameRefID", "options": query.ref}:
                unit = next((p["value"] for p in override["properties"] if p["id"] == "unit"), unit)
        names = list(query.fields)
        for pattern in query.field_patterns:
            names += [n for n in signals.get(query.measurement, ()) if re.search(pattern, n)]
        for name in names:
            suffix = next((s for s in UNITS_OF_SUFFIX if name.endswith(s)), None)
            if suffix is None:
                continue
            assert unit in UNITS_OF_SUFFIX[suffix], f"{query.where}: {name} shown in {unit!r}"
            if suffix == "_kw" and unit == MW:
                assert "/ 1000.0" in query.text, f"{query.where}: {name} is in kW, the panel in MW"
            checked += 1
    assert checked >= 40


# -- thresholds -----------------------------------------------------------------------------------


def test_panels_of_limited_quantities_show_the_limit_in_red(queries: list[Query]) -> None:
    shown = set()
    for query in queries:
        for field in query.fields:
            limit = LIMITS.get((query.measurement, field))
            if limit is None:
                continue
            defaults = query.panel["fieldConfig"]["defaults"]
            steps = defaults["thresholds"]["steps"]
            assert any(s["value"] == pytest.approx(limit) and s["color"] == "red" for s in steps), (
                f"{query.where}: {field} needs a red threshold at {limit}"
            )
            if query.panel["type"] == "timeseries":
                assert defaults["custom"]["thresholdsStyle"]["mode"] != "off", f"{query.where}: draw the limit"
            shown.add((query.measurement, field))
    assert shown >= REQUIRED_LIMITS, REQUIRED_LIMITS - shown


def test_limits_agree_with_the_profiles() -> None:
    profiles = REPO / "config" / "profiles"
    cdu = load_profile(profiles / "cdu.yaml").signals
    plc = load_profile(profiles / "hp-plc.yaml").signals
    assert cdu["tcs_supply_setpoint_c"].max == IT_LIMIT_C  # the CDU refuses setpoints above the IT limit
    assert plc["dry_cooler_setpoint_c"].max == FWS_LIMIT_C  # "clamped to 20 .. facility supply limit"
    assert plc["hp_supply_setpoint_c"].max == DH_MAX_SUPPLY_C


def test_device_availability_is_red_when_zero(queries: list[Query]) -> None:
    availability = [q for q in queries if q.measurement == GATEWAY and "available" in q.fields]
    timelines = [q.panel for q in availability if q.panel["type"] == "state-timeline"]
    assert timelines, "device availability needs a state timeline"
    for panel in timelines:
        mapped = {
            value: result["color"]
            for mapping in panel["fieldConfig"]["defaults"]["mappings"]
            if mapping["type"] == "value"
            for value, result in mapping["options"].items()
        }
        assert mapped.get("0") == "red", panel["title"]
        assert mapped.get("1") == "green", panel["title"]


def test_state_timelines_map_their_states(visual_panels: list[dict[str, Any]]) -> None:
    timelines = [p for p in visual_panels if p["type"] == "state-timeline"]
    assert len(timelines) >= 8
    for panel in timelines:
        assert panel["fieldConfig"]["defaults"].get("mappings"), f"{panel['title']!r}: say what each state means"


def test_every_panel_that_can_turn_red_names_a_runbook_in_the_readme(visual_panels: list[dict[str, Any]]) -> None:
    headings = set(re.findall(r"^### (.+)$", GRAFANA_README.read_text(encoding="utf-8"), re.MULTILINE))
    referenced = set()
    for panel in visual_panels:
        names = re.findall(r'"([^"]+)"', panel["description"])
        if '"red"' in json.dumps(panel["fieldConfig"]):
            assert names, f"{panel['title']!r} can turn red: its description must name a runbook section"
        for name in names:
            assert name in headings, f"{panel['title']!r} refers to runbook {name!r}, not in deploy/grafana/README.md"
        referenced |= set(names)
    assert len(referenced) >= 10


# -- variables ------------------------------------------------------------------------------------


def test_template_variables_are_the_datasource_site_and_device(
    variables: dict[str, dict[str, Any]], emitted: tuple[set[str], set[str]]
) -> None:
    _fields, tags = emitted
    source = variables["datasource"]
    assert source["type"] == "datasource"
    assert source["query"] == "influxdb"
    for name in ("site", "device"):
        variable = variables[name]
        assert variable["type"] == "query", name
        assert variable["multi"] is True, name
        assert variable["datasource"] == DATASOURCE_REF, name
        assert _TAG_QUERY.findall(variable["query"]) == [name], f"variable {name} lists the values of tag {name}"
        assert "schema.tagValues(bucket: v.defaultBucket" in variable["query"], name
        predicate_columns = {m["column"] for m in _PREDICATE.finditer(variable["query"])}
        assert predicate_columns <= tags, name
    assert "${site:regex}" in variables["device"]["query"], "the device list follows the site"


def test_queries_use_only_defined_variables(queries: list[Query], variables: dict[str, dict[str, Any]]) -> None:
    texts = [q.text for q in queries] + [v["query"] for v in variables.values()]
    used = set()
    for text in texts:
        for match in _VARIABLE_USE.finditer(text):
            used.add(match[1] or match[2])
    assert used, "the queries use the site and device variables"
    assert used <= set(variables), used - set(variables)


# -- provisioning ---------------------------------------------------------------------------------


def test_datasource_provisioning_is_influxdb_flux_from_the_environment(variables: dict[str, dict[str, Any]]) -> None:
    config = yaml.safe_load(DATASOURCE_FILE.read_text(encoding="utf-8"))
    assert config["apiVersion"] == 1
    [source] = config["datasources"]
    assert source["type"] == "influxdb"
    assert source["access"] == "proxy"
    assert source["url"] == "${INFLUX_URL}"
    assert source["jsonData"]["version"] == "Flux"
    assert source["jsonData"]["organization"] == "${INFLUX_ORG}"
    assert source["jsonData"]["defaultBucket"] == "${INFLUX_BUCKET}"
    assert source["secureJsonData"]["token"] == "${INFLUX_TOKEN}"
    assert variables["datasource"]["current"]["value"] == source["uid"], "the dashboard defaults to this source"


def test_dashboard_provider_points_at_the_dashboards_folder() -> None:
    config = yaml.safe_load(PROVIDER_FILE.read_text(encoding="utf-8"))
    assert config["apiVersion"] == 1
    [provider] = config["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == f"{INSTALL_ROOT}/{DASHBOARD.parent.relative_to(REPO).as_posix()}"
    assert f"{INSTALL_ROOT}/" in (REPO / "deploy" / "README.md").read_text(encoding="utf-8")
    # Grafana loads every *.json under the path: only the dashboard may be there.
    assert sorted(GRAFANA.rglob("*.json")) == [DASHBOARD]
    readme = GRAFANA_README.read_text(encoding="utf-8")
    for file in (DATASOURCE_FILE, PROVIDER_FILE):
        assert file.relative_to(GRAFANA).as_posix() in readme, f"README says where {file.name} goes"
    assert "/etc/grafana/provisioning/datasources/" in readme
    assert "/etc/grafana/provisioning/dashboards/" in readme


# -- alert rules ----------------------------------------------------------------------------------

ALERTS_FILE = GRAFANA / "provisioning" / "alerting" / "heat-gateway.yaml"
#: what issue 10 asks to be alerted on, by rule uid
REQUIRED_ALERTS = {
    "hg-device-unavailable",
    "hg-spool-growing",
    "hg-historian-lag",
    "hg-dh-deviation",
    "hg-cdu-near-it-limit",
    "hg-control-not-auto",
}


@pytest.fixture(scope="module")
def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS_FILE.read_text(encoding="utf-8"))
    assert document["apiVersion"] == 1
    return [rule for group in document["groups"] for rule in group["rules"]]


@pytest.fixture(scope="module")
def historian_fields() -> set[str]:
    """The fields of the historian's own measurement, from a historian built from the example site."""
    from gateway.historian import Historian  # noqa: PLC0415 - only these tests need it

    site = load_site(EXAMPLE_SITE)
    assert site.config.influxdb is not None
    return set(Historian(site.config.mqtt, site.config.influxdb, site.config.site).stats_fields())


def test_alert_rules_cover_what_an_operator_must_hear_about(alert_rules: list[dict[str, Any]]) -> None:
    uids = [rule["uid"] for rule in alert_rules]
    assert len(uids) == len(set(uids)), uids
    assert set(uids) >= REQUIRED_ALERTS
    readme = GRAFANA_README.read_text(encoding="utf-8")
    for rule in alert_rules:
        assert rule["title"] in readme, f"deploy/grafana/README.md: no runbook entry for alert {rule['title']!r}"
        assert rule["annotations"]["summary"], rule["uid"]
        assert len(rule["annotations"]["runbook"]) > 40, f"{rule['uid']}: a runbook line that says what to do"
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["uid"]
        assert "$labels" not in json.dumps(rule), f"{rule['uid']}: Grafana expands $ in provisioning files"


def test_alert_rules_are_well_formed(alert_rules: list[dict[str, Any]]) -> None:
    datasource = yaml.safe_load(DATASOURCE_FILE.read_text(encoding="utf-8"))["datasources"][0]["uid"]
    for rule in alert_rules:
        refs = {item["refId"]: item for item in rule["data"]}
        assert rule["condition"] in refs, rule["uid"]
        for ref, item in refs.items():
            assert item["model"]["refId"] == ref, rule["uid"]
            if item["datasourceUid"] == "__expr__":
                assert item["model"]["expression"] in refs, f"{rule['uid']}: {ref} reads a query that is not there"
            else:
                assert item["datasourceUid"] == datasource, f"{rule['uid']}: not the provisioned data source"
                assert item["relativeTimeRange"]["from"] > 0, rule["uid"]


def test_alert_queries_read_what_is_really_written(
    alert_rules: list[dict[str, Any]],
    signals: dict[str, set[str]],
    emitted: tuple[set[str], set[str]],
    historian_fields: set[str],
) -> None:
    gateway_fields, _tags = emitted
    written = {**signals, GATEWAY: gateway_fields, CONTROL: control_status_fields(), "historian": historian_fields}
    for rule in alert_rules:
        for item in rule["data"]:
            if item["datasourceUid"] == "__expr__":
                continue
            query = parse_query({"id": rule["uid"], "title": rule["title"]}, item["model"])
            assert len(query.measurements) == 1, f"alert {rule['uid']}: one measurement"
            assert query.fields, f"alert {rule['uid']}: name its field"
            for field in query.fields:
                assert field in written[query.measurement], (
                    f"alert {rule['uid']}: {query.measurement}.{field} is not written by the gateway or historian"
                )
            assert 'r.site == "${SITE}"' in query.text, f"alert {rule['uid']}: one site per Grafana alert file"

// A small OPC UA server on node-opcua, an implementation independent of asyncua, for the
// gateway's interop test (tests/test_opcua_interop.py).
//
//   node opcua_server.js PORT PKI_DIR [--secure]
//
// Serves a few variables of a heat-pump PLC in namespace urn:heat-gateway:interop, string node
// ids with dotted names. Plant.Setpoint is writable and range-checked by the server
// (30-60 degC: BadOutOfRange outside); Plant.Broken always reads BadSensorFailure.
// --secure: only Basic256Sha256 SignAndEncrypt, user "gateway" / "s3cret", no anonymous
// sessions; unknown client certificates are accepted (the test does not manage node-opcua's PKI).
// Prints "LISTENING <port>" once it accepts connections; stops on SIGTERM or when stdin closes.
"use strict";
const path = require("path");
const {
    OPCUAServer,
    OPCUACertificateManager,
    Variant,
    DataType,
    DataValue,
    StatusCodes,
    SecurityPolicy,
    MessageSecurityMode,
    nodesets,
} = require("node-opcua");

const NAMESPACE = "urn:heat-gateway:interop";

async function main() {
    const port = Number(process.argv[2] || 0);
    const pki = process.argv[3] || path.join(__dirname, "pki");
    const secure = process.argv.includes("--secure");
    // --reject-unknown-clients: a client certificate nobody trusted yet is refused, as on a PLC
    const acceptClients = !process.argv.includes("--reject-unknown-clients");

    const serverCertificateManager = new OPCUACertificateManager({
        rootFolder: path.join(pki, "server"),
        automaticallyAcceptUnknownCertificate: acceptClients,
    });
    const userCertificateManager = new OPCUACertificateManager({
        rootFolder: path.join(pki, "user"),
        automaticallyAcceptUnknownCertificate: true,
    });
    const server = new OPCUAServer({
        port,
        nodeset_filename: [nodesets.standard],
        serverCertificateManager,
        userCertificateManager,
        buildInfo: { productName: "heat-gateway interop PLC", manufacturerName: "heat-gateway tests" },
        securityPolicies: secure ? [SecurityPolicy.Basic256Sha256] : [SecurityPolicy.None],
        securityModes: secure ? [MessageSecurityMode.SignAndEncrypt] : [MessageSecurityMode.None],
        allowAnonymous: !secure,
        userManager: {
            isValidUser: (user, password) => user === "gateway" && password === "s3cret",
        },
    });
    await server.initialize();

    const addressSpace = server.engine.addressSpace;
    const ns = addressSpace.registerNamespace(NAMESPACE);
    const plant = ns.addFolder(addressSpace.rootFolder.objects, { browseName: "Plant", nodeId: "s=Plant" });
    const info = ns.addFolder(addressSpace.rootFolder.objects, { browseName: "Info", nodeId: "s=Info" });

    const values = { supply: 45.25, setpoint: 50.0, stage: 2 };
    const started = new Date();
    ns.addVariable({
        componentOf: plant,
        nodeId: "s=Plant.SupplyTemp",
        browseName: "SupplyTemp",
        dataType: "Double",
        minimumSamplingInterval: 100,
        value: {
            timestamped_get: () =>
                new DataValue({
                    value: new Variant({ dataType: DataType.Double, value: values.supply }),
                    statusCode: StatusCodes.Good,
                    sourceTimestamp: started,
                    serverTimestamp: new Date(),
                }),
        },
    });
    ns.addVariable({
        componentOf: plant,
        nodeId: "s=Plant.Flow",
        browseName: "Flow",
        dataType: "Float",
        value: new Variant({ dataType: DataType.Float, value: 120.5 }),
    });
    ns.addVariable({
        componentOf: plant,
        nodeId: "s=Plant.State",
        browseName: "State",
        dataType: "UInt16",
        value: new Variant({ dataType: DataType.UInt16, value: 4 }),
    });
    ns.addVariable({
        componentOf: plant,
        nodeId: "s=Plant.Enabled",
        browseName: "Enabled",
        dataType: "Boolean",
        value: new Variant({ dataType: DataType.Boolean, value: true }),
    });
    ns.addVariable({
        componentOf: plant,
        nodeId: "s=Plant.Broken",
        browseName: "Broken",
        dataType: "Double",
        minimumSamplingInterval: 100,
        value: {
            timestamped_get: () => new DataValue({ statusCode: StatusCodes.BadSensorFailure, serverTimestamp: new Date() }),
        },
    });
    ns.addVariable({
        componentOf: plant,
        nodeId: "s=Plant.Setpoint",
        browseName: "Setpoint",
        dataType: "Float",
        accessLevel: "CurrentRead | CurrentWrite",
        userAccessLevel: "CurrentRead | CurrentWrite",
        minimumSamplingInterval: 100,
        value: {
            get: () => new Variant({ dataType: DataType.Float, value: values.setpoint }),
            set: (variant) => {
                if (variant.dataType !== DataType.Float) {
                    return StatusCodes.BadTypeMismatch;
                }
                if (variant.value < 30 || variant.value > 60) {
                    return StatusCodes.BadOutOfRange;
                }
                values.setpoint = variant.value;
                return StatusCodes.Good;
            },
        },
    });
    ns.addVariable({
        componentOf: plant,
        nodeId: "s=Plant.Stage",
        browseName: "Stage",
        dataType: "Int16",
        accessLevel: "CurrentRead | CurrentWrite",
        userAccessLevel: "CurrentRead | CurrentWrite",
        minimumSamplingInterval: 100,
        value: {
            get: () => new Variant({ dataType: DataType.Int16, value: values.stage }),
            set: (variant) => {
                if (variant.dataType !== DataType.Int16) {
                    return StatusCodes.BadTypeMismatch;
                }
                values.stage = variant.value;
                return StatusCodes.Good;
            },
        },
    });
    ns.addVariable({
        componentOf: info,
        nodeId: "s=Info.Serial",
        browseName: "Serial",
        dataType: "String",
        value: new Variant({ dataType: DataType.String, value: "NODE-0001" }),
    });

    // The supply temperature moves, so a subscription has changes to deliver.
    const timer = setInterval(() => {
        values.supply = Math.round((values.supply + 0.25) * 100) / 100;
    }, 200);

    await server.start();
    process.stdout.write(`LISTENING ${server.endpoints[0].port}\n`);

    let stopping = false;
    const stop = async () => {
        if (stopping) return;
        stopping = true;
        clearInterval(timer);
        await server.shutdown(0);
        process.exit(0);
    };
    process.on("SIGTERM", stop);
    process.on("SIGINT", stop);
    process.stdin.on("end", stop); // the test process went away: do not linger
    process.stdin.resume();
}

main().catch((err) => {
    process.stderr.write(`${err && err.stack ? err.stack : err}\n`);
    process.exit(1);
});

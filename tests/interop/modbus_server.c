/*
 * A tiny Modbus TCP server built on Debian's libmodbus: an implementation that is not ours,
 * for the gateway's pymodbus-based driver to read and write (tests/test_modbus_interop.py
 * compiles it with `gcc modbus_server.c $(pkg-config --cflags --libs libmodbus)`).
 *
 * It listens on 127.0.0.1, on the port given as the first argument (0 = any free port),
 * prints "PORT <n>" on stdout once it listens, and serves any number of connections with
 * select() until it is killed. libmodbus answers every unit id and lets every mapped
 * register be written; reads or writes outside the map get exception 2.
 *
 * The map (PDU addresses; values chosen so that each decodes to one known number):
 *   holding 0      uint16 1234                     (written by the tests with FC6)
 *   holding 1-2    float32 41.5, word order CDAB   [0x0000, 0x4226]
 *   holding 3      int16 -300                      (x 0.01 = -3.00)
 *   holding 4-5    string "HX1", ABCD              [0x4858, 0x3100]
 *   holding 6      bit field word 0x0105           (bits 0, 2 and 8 set)
 *   holding 7-8    uint32 305419896, ABCD          [0x1234, 0x5678]
 *   holding 9      uint16 0                        (written by the tests with FC16)
 *   holding 10-11  float32 41.5 as modbus_set_float_cdab() stores it (see below)
 *   input   0      uint16 777
 *   input   1-2    float32 -12.25, CDAB            [0x0000, 0xC144]
 *   coils   0-7    1, 0, 0, ...
 *   discrete 0-7   1, 0, 1, 0, ...
 *
 * The CDAB floats are written word by word on purpose: libmodbus up to 3.1.7 on a
 * little-endian CPU does not put the bytes where the names of its float helpers say
 * (libmodbus issues #358 and #611): Debian's 3.1.6 modbus_set_float_cdab(41.5) stores
 * [0x0000, 0x2642], which is DCBA. Holding 10-11 keeps that, so the test pins the pitfall down
 * (docs/profiles.md tells profile writers about it).
 */
#include <errno.h>
#include <modbus.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    int port = argc > 1 ? atoi(argv[1]) : 0;
    modbus_t *ctx = modbus_new_tcp("127.0.0.1", port);
    modbus_mapping_t *map = modbus_mapping_new(8, 8, 12, 3);
    if (ctx == NULL || map == NULL) {
        fprintf(stderr, "libmodbus: %s\n", modbus_strerror(errno));
        return 1;
    }

    map->tab_registers[0] = 1234;
    map->tab_registers[1] = 0x0000; /* 41.5 = 0x42260000: low word first */
    map->tab_registers[2] = 0x4226;
    map->tab_registers[3] = (uint16_t)-300;
    map->tab_registers[4] = 0x4858; /* "HX" */
    map->tab_registers[5] = 0x3100; /* "1", NUL */
    map->tab_registers[6] = 0x0105;
    map->tab_registers[7] = 0x1234;
    map->tab_registers[8] = 0x5678;
    map->tab_registers[9] = 0;
    modbus_set_float_cdab(41.5f, &map->tab_registers[10]);
    map->tab_input_registers[0] = 777;
    map->tab_input_registers[1] = 0x0000; /* -12.25 = 0xC1440000 */
    map->tab_input_registers[2] = 0xC144;
    map->tab_bits[0] = 1;
    map->tab_input_bits[0] = 1;
    map->tab_input_bits[2] = 1;

    int server = modbus_tcp_listen(ctx, 8);
    if (server == -1) {
        fprintf(stderr, "listen: %s\n", modbus_strerror(errno));
        return 1;
    }
    struct sockaddr_in address;
    socklen_t length = sizeof(address);
    getsockname(server, (struct sockaddr *)&address, &length);
    printf("PORT %d\n", ntohs(address.sin_port));
    fflush(stdout);

    fd_set open_sockets;
    FD_ZERO(&open_sockets);
    FD_SET(server, &open_sockets);
    int highest = server;
    uint8_t query[MODBUS_TCP_MAX_ADU_LENGTH];

    for (;;) {
        fd_set readable = open_sockets;
        if (select(highest + 1, &readable, NULL, NULL, NULL) == -1) {
            if (errno == EINTR) {
                continue;
            }
            perror("select");
            return 1;
        }
        for (int fd = 0; fd <= highest; fd++) {
            if (!FD_ISSET(fd, &readable)) {
                continue;
            }
            if (fd == server) {
                int client = accept(server, NULL, NULL);
                if (client != -1) {
                    FD_SET(client, &open_sockets);
                    if (client > highest) {
                        highest = client;
                    }
                }
                continue;
            }
            modbus_set_socket(ctx, fd);
            int received = modbus_receive(ctx, query);
            if (received > 0) {
                modbus_reply(ctx, query, received, map);
            } else if (received == -1) {
                /* the client closed the connection (or sent garbage): forget it */
                close(fd);
                FD_CLR(fd, &open_sockets);
            }
        }
    }
}

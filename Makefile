# The C core as a library for C and C++ programs, built from the same sources
# with the same flags as the Python extension (pydarknet/_build_ffi.py prints
# them; PYDARKNET_NO_BLAS and PYDARKNET_CFLAGS apply as for the extension),
# linked to the same OpenBLAS (the scipy-openblas32 package of $(PYTHON),
# found at run time through an rpath).
#
#   make lib                          build/c/libpydarknet.so and build/c/libpydarknet.a
#   make install PREFIX=/usr/local    lib/, include/pydarknet.h and lib/pkgconfig/pydarknet.pc under PREFIX
#   make example                      build/c/detect from examples/detect.c
#   make clean
#
# Then: cc prog.c $(pkg-config --cflags --libs pydarknet)   (PKG_CONFIG_PATH=PREFIX/lib/pkgconfig)

PYTHON ?= python3
PREFIX ?= /usr/local
BUILD ?= build/c

$(shell mkdir -p $(BUILD) && $(PYTHON) pydarknet/_build_ffi.py --print-make > $(BUILD)/config.mk)
ifneq ($(.SHELLSTATUS),0)
$(error '$(PYTHON) pydarknet/_build_ffi.py --print-make' failed: the build needs Python with cffi)
endif
include $(BUILD)/config.mk

OBJS := $(patsubst %.c,$(BUILD)/obj/%.o,$(DN_SOURCES))
HEADERS := src_c/include/pydarknet.h src_c/core/internal.h

.PHONY: lib install example clean

lib: $(BUILD)/libpydarknet.so $(BUILD)/libpydarknet.a

$(BUILD)/obj/%.o: %.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(DN_CFLAGS) -fPIC -fvisibility=hidden $(CFLAGS) -c $< -o $@

$(BUILD)/libpydarknet.so: $(OBJS)
	$(CC) -shared -o $@ $(OBJS) $(DN_OBJECTS) $(DN_LDFLAGS) $(LDFLAGS) $(DN_LDLIBS)

$(BUILD)/libpydarknet.a: $(OBJS)
	rm -f $@
	$(AR) rcs $@ $(OBJS)

$(BUILD)/detect: examples/detect.c $(BUILD)/libpydarknet.so
	$(CC) -std=c11 -Wall -O2 -Isrc_c/include $< -o $@ -L$(BUILD) -lpydarknet -Wl,-rpath,$(abspath $(BUILD))

example: $(BUILD)/detect

install: lib
	install -d $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/lib/pkgconfig
	install -m 644 src_c/include/pydarknet.h $(DESTDIR)$(PREFIX)/include/
	install -m 755 $(BUILD)/libpydarknet.so $(DESTDIR)$(PREFIX)/lib/
	install -m 644 $(BUILD)/libpydarknet.a $(DESTDIR)$(PREFIX)/lib/
	printf '%s\n' 'prefix=$(PREFIX)' 'libdir=$${prefix}/lib' 'includedir=$${prefix}/include' '' \
		'Name: pydarknet' 'Description: Darknet-compatible neural networks: the C core of pydarknet' \
		'Version: $(DN_VERSION)' 'Cflags: -I$${includedir}' \
		'Libs: -L$${libdir} -lpydarknet -Wl,-rpath,$${libdir}' 'Libs.private: $(DN_LDFLAGS) $(DN_LDLIBS)' \
		> $(DESTDIR)$(PREFIX)/lib/pkgconfig/pydarknet.pc

clean:
	rm -rf $(BUILD)

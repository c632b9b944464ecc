import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import * as grpc from '@grpc/grpc-js'
import * as protoLoader from '@grpc/proto-loader'
import protobuf from 'protobufjs'
import { ROOT_URL } from '../paths.js'

/** Decoded shapes of the minimal protos in `proto/` (int64 as number, defaults filled in). */
export interface PbDescriptor {
  mediaType: string
  digest: string
  size: number
}
export interface PbImage {
  name: string
  target: PbDescriptor | null
}
export interface PbInfo {
  digest: string
  size: number
}
export interface PbStatus {
  ref: string
  offset: number
  total: number
  expected: string
}
export interface PbEnvelope {
  namespace: string
  topic: string
  event: { typeUrl: string; value: Buffer } | null
}

type Unary<Req, Res> = (
  req: Req,
  md: grpc.Metadata,
  options: grpc.CallOptions,
  cb: (err: grpc.ServiceError | null, res: Res) => void,
) => grpc.ClientUnaryCall
type ServerStream<Req> = (
  req: Req,
  md: grpc.Metadata,
  options?: grpc.CallOptions,
) => grpc.ClientReadableStream<unknown>

interface ImagesClient extends grpc.Client {
  Get: Unary<{ name: string }, { image: PbImage | null }>
  List: Unary<{ filters: string[] }, { images: PbImage[] }>
}
export interface PbWriteRequest {
  action: 'STAT' | 'WRITE' | 'COMMIT'
  ref: string
  total?: number
  expected?: string
  offset?: number
  data?: Buffer
}
export interface PbWriteResponse {
  action: string
  offset: number
  total: number
  digest: string
}

interface ContentClient extends grpc.Client {
  Info: Unary<{ digest: string }, { info: PbInfo | null }>
  Read: ServerStream<{ digest: string; offset: number; size: number }>
  ListStatuses: Unary<{ filters: string[] }, { statuses: PbStatus[] }>
  Abort: Unary<{ ref: string }, Record<string, never>>
  Write: (
    md: grpc.Metadata,
    options?: grpc.CallOptions,
  ) => grpc.ClientDuplexStream<PbWriteRequest, PbWriteResponse>
}
interface EventsClient extends grpc.Client {
  Subscribe: ServerStream<{ filters: string[] }>
}

const PROTO_DIR = fileURLToPath(new URL('proto/', ROOT_URL))
const LOADER_OPTIONS: protoLoader.Options = {
  longs: Number,
  enums: String,
  defaults: true,
  arrays: true,
  keepCase: false,
}

/** Typed gRPC clients for containerd's Images, Content and Events services over one unix socket. */
export class ContainerdClient {
  readonly images: ImagesClient
  readonly content: ContentClient
  readonly events: EventsClient
  private readonly imageEvent: protobuf.Type

  constructor(
    readonly address: string,
    readonly namespace: string,
  ) {
    const defs = protoLoader.loadSync(['images.proto', 'content.proto', 'events.proto'], {
      ...LOADER_OPTIONS,
      includeDirs: [PROTO_DIR],
    })
    const pkg = grpc.loadPackageDefinition(defs) as unknown as {
      containerd: { services: Record<string, { v1: Record<string, grpc.ServiceClientConstructor> }> }
    }
    const target = address.startsWith('unix:') ? address : `unix://${address}`
    const options: grpc.ClientOptions = {
      'grpc.max_receive_message_length': 64 * 1024 * 1024,
      // HTTP/2's default 64 KiB window stalls Content/Read on WINDOW_UPDATEs; 8 MiB doubled gRPC reads here
      'grpc-node.flow_control_window': 8 * 1024 * 1024,
      // reconnect quickly after a containerd restart
      'grpc.initial_reconnect_backoff_ms': 100,
      'grpc.max_reconnect_backoff_ms': 2000,
    }
    const creds = grpc.credentials.createInsecure()
    const svc = pkg.containerd.services
    this.images = new (svc.images!.v1.Images as grpc.ServiceClientConstructor)(
      target,
      creds,
      options,
    ) as unknown as ImagesClient
    this.content = new (svc.content!.v1.Content as grpc.ServiceClientConstructor)(
      target,
      creds,
      options,
    ) as unknown as ContentClient
    this.events = new (svc.events!.v1.Events as grpc.ServiceClientConstructor)(
      target,
      creds,
      options,
    ) as unknown as EventsClient
    this.imageEvent = protobuf
      .loadSync(join(PROTO_DIR, 'events.proto'))
      .lookupType('containerd.services.events.v1.ImageEvent')
  }

  metadata(): grpc.Metadata {
    const md = new grpc.Metadata()
    md.set('containerd-namespace', this.namespace)
    return md
  }

  /** Calls a unary method with the namespace, a deadline and abort support. */
  unary<Req, Res>(
    method: Unary<Req, Res>,
    client: grpc.Client,
    req: Req,
    signal: AbortSignal | undefined,
    timeoutMs = 10_000,
  ): Promise<Res> {
    return new Promise((resolve, reject) => {
      signal?.throwIfAborted()
      const call = method.call(
        client,
        req,
        this.metadata(),
        { deadline: Date.now() + timeoutMs },
        (err, res) => {
          signal?.removeEventListener('abort', onAbort)
          if (err !== null) reject(err)
          else resolve(res)
        },
      )
      const onAbort = (): void => call.cancel()
      signal?.addEventListener('abort', onAbort, { once: true })
    })
  }

  /** The image name from an `/images/*` event payload (ImageCreate, ImageUpdate and ImageDelete alike). */
  decodeImageEventName(value: Uint8Array): string {
    return (this.imageEvent.decode(value) as unknown as { name: string }).name
  }

  close(): void {
    this.images.close()
    this.content.close()
    this.events.close()
  }
}
